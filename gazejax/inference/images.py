"""`gazejax.predict` for chest X-ray models: DICOM, PNG or JPEG files in, `predictions.csv` (and explanation maps) out.

Each image is read and resized as training's cache does (`gazejax.data.cxr.files.read_image`: the DICOM display
reader with VOI LUT and MONOCHROME1, aspect padding, area resampling), batched at a fixed size (one compiled
function; the last batch padded by repetition), and given to each model's `Inference.run`; probabilities and maps
are averaged over the models. The next batch is read in a background thread while the current one computes.
`predictions.csv` (one row per image: file, one probability per class or finding, predicted label) is rewritten
atomically after every batch, so an interrupted run keeps what it finished and a rerun skips those images.
"""
from __future__ import annotations

import csv
import logging
import os

import numpy as np

from gazejax.data.cxr import files as cxr_files
from gazejax.data.io import atomic_file
from gazejax.inference import common

log = logging.getLogger("gazejax")

PREDICTIONS = "predictions.csv"


def image_key(path: str, root: str) -> str:
    """The name of an image in predictions.csv: its path relative to the --input folder (its name for a file)."""
    return os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)


def map_stem(key: str) -> str:
    return key.replace(os.sep, "__").rsplit(".", 1)[0]


def read_predictions(path: str) -> dict[str, dict]:
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def write_predictions(path: str, rows: dict[str, dict], columns: list[str]) -> None:
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for key in sorted(rows):
            writer.writerow({c: rows[key].get(c, "") for c in columns})


def predicted_label(probs: np.ndarray, names: list[str], multilabel: bool) -> str:
    """Arg-max class; for multi-label findings those with p >= 0.5 joined by ';' ("none" when there is none)."""
    if multilabel:
        return ";".join(n for n, p in zip(names, probs) if p >= 0.5) or "none"
    return names[int(np.argmax(probs))]


def overlay(image: np.ndarray, heat: np.ndarray, tf=None) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the radiograph with the min-max normalised map in 'jet'. `image` is the model input
    (`tf` None: the map bilinearly resized to it) or the original full-resolution image with the `ResizeTransform`
    `tf` from it to the model input (the map mapped back through it: `cxr_files.map_to_source`)."""
    import matplotlib

    from gazejax.analysis.maps import minmax, resize_maps

    heat = np.asarray(heat, np.float32)
    up = minmax((resize_maps(heat[None], image.shape) if tf is None else cxr_files.map_to_source(heat, tf)[None]))[0]
    rgb = matplotlib.colormaps["jet"](up)[..., :3]
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
    return np.round(255 * (0.6 * gray + 0.4 * rgb)).astype(np.uint8)


def save_map(out_dir: str, key: str, image: np.ndarray, heat: np.ndarray, tf=None) -> None:
    """maps/<key>.npy (the map on the model's grid) and maps/<key>.png (`overlay` of `image`, with `tf`)."""
    from PIL import Image

    folder = os.path.join(out_dir, "maps")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, map_stem(key))
    with atomic_file(stem + ".npy", "wb") as f:
        np.save(f, np.asarray(heat, np.float32))
    with atomic_file(stem + ".png", "wb") as f:
        Image.fromarray(overlay(image, heat, tf)).save(f, format="PNG")


def infer(models: list, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean probabilities [B, C] over the models and mean map [B, h, w] over those that have one (of one shape)."""
    probs, maps = [], []
    for m in models:
        out = m.method.inference.run(m.predict, images, m.config, m.stage)
        probs.append(np.asarray(out["probs"], np.float64))
        if out.get("map") is not None:
            maps.append(np.asarray(out["map"], np.float32))
    if maps and len({x.shape for x in maps}) > 1:
        log.warning("the models' maps have different grids %s: the first model's map is kept",
                    sorted({x.shape for x in maps}))
        maps = maps[:1]
    mean = probs[0].copy()
    for p in probs[1:]:
        mean += p
    return mean / len(probs), (sum(maps[1:], maps[0].copy()) / len(maps) if maps else None)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run(models: list, input_path: str, out_dir: str, *, overwrite: bool = False, maps: bool = False,
        batch: int | None = None) -> dict:
    """Predicts every image of `input_path` into `out_dir`; returns {"done", "skipped", "failures", "rows", ...}."""
    from gazejax.engine.logs import ProgressBar

    spec, meta = models[0].meta["preprocessing"], models[0].meta
    names, multilabel = list(meta["labels"]), bool(meta["multilabel"])
    paths = cxr_files.list_images(input_path)
    root = os.path.abspath(input_path)
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, PREDICTIONS)
    rows = {} if overwrite else read_predictions(csv_path)
    columns = ["file"] + [f"p_{n}" for n in names] + ["predicted"]

    def finished(p: str) -> bool:
        key = image_key(p, root)
        return key in rows and (not maps or os.path.exists(os.path.join(out_dir, "maps", map_stem(key) + ".npy")))

    todo = [p for p in paths if not finished(p)]
    skipped = len(paths) - len(todo)
    if skipped:
        log.info("%d of %d images already predicted in %s (skipped; --overwrite redoes them)", skipped, len(paths),
                 csv_path)
    size = int(batch or models[0].config.eval.get("batch", 8))
    failures, done = common.Failures(), 0
    bar = ProgressBar(len(todo), desc="predict", enabled=True)

    def load(group: list[str]) -> list:
        out = []
        for p in group:
            try:  # with --maps also the original image, on which the overlay is drawn
                out.append((p, cxr_files.read_image_and_source(p, spec) if maps else
                            (cxr_files.read_image(p, spec), None, None), None))
            except common.INPUT_ERRORS as e:
                out.append((p, None, e))
        return out

    for _, loaded, _ in common.prefetch(_batches(todo, size), load):
        for p, _, error in loaded:
            if error is not None:
                failures.add(p, error)
        good = [(p, read) for p, read, error in loaded if error is None]
        if good:
            images = np.stack([read[0] for _, read in good])[..., None].astype(np.float32)
            padded = np.concatenate([images, np.repeat(images[-1:], size - len(good), axis=0)])
            probs, heat = infer(models, padded)
            for j, (p, (_, source, tf)) in enumerate(good):
                key = image_key(p, root)
                rows[key] = {"file": key, **{f"p_{n}": f"{v:.9g}" for n, v in zip(names, probs[j])},
                             "predicted": predicted_label(probs[j], names, multilabel)}
                if maps and heat is not None:
                    save_map(out_dir, key, source, heat[j], tf)
            done += len(good)
            write_predictions(csv_path, rows, columns)
        bar.update(len(loaded))
    bar.close()
    if not os.path.exists(csv_path):
        write_predictions(csv_path, rows, columns)
    if maps and not meta.get("map_name"):
        log.warning("--maps: the model has no explanation map (%s / %s); no maps written", meta["method_family"],
                    meta["method"])
    return {"total": len(paths), "done": done, "skipped": skipped, "failures": failures, "rows": rows,
            "names": names, "multilabel": multilabel, "root": root}
