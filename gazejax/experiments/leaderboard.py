"""One leaderboard across chest X-ray methods: every finished cell of a cross-method grid (cells with their own
"config", see `runner.cell_base`) scored the same way on the same test images.

Each cell's selected weights are exported (`gazejax.export`, into `<cell>/model`) and applied through its method's
`Inference` hook, the path `gazejax.predict` takes: class probabilities and the method's explanation map (CAM,
predicted saliency, SAN gaze, Grad-CAM or attention, of the predicted class). The readers' gaze is rendered once,
the same for every row, at a common grid (1/`stride` of the image; unit-mass Gaussians of sigma `gaze_sigma_dicom`
EGD-CXR DICOM pixels, duration-weighted, max-normalised), and every map is resized to that grid (bilinear) and
min-max normalised per image.

Per row (mean over seeds): macro and per-class one-vs-rest AUROC, each with its 95 % percentile-bootstrap CI over
test images (of the seed-mean probabilities), accuracy, for self-supervised rows the linear-probe test AUROC
their own evaluation logged after pretraining (the table's AUROC is the exported fine-tuned stage's) and the
contrastive loss at the end of pretraining next to its chance value ln(2N - 1) (has pretraining learned?); gaze agreement
over images with gaze (CC, KL, NSS, AUC-Judd, HS, SIM) and the pointing game (the map's peak inside the true class's
organ: heart for CHF, lungs for pneumonia; Normal images not scored); parameters and training time (run.json);
paired tests against the reference row: the macro AUROC difference by a paired bootstrap over test images
(`stats.paired_bootstrap_test`) and a t-test paired by seed, per-image CC by a t-test paired by image. Controls
reuse a row's cells with its map replaced (e.g. "random": uniform noise, seeded), giving chance-level agreement.
Writes leaderboard.csv, leaderboard.md and leaderboard.png (AUROC vs CC, one point per row).
"""
from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np

from gazejax.analysis.maps import minmax, resize_maps
from gazejax.data.io import write_json, write_text
from gazejax.metrics import classification as cls
from gazejax.metrics import saliency, stats
from gazejax.metrics.localization import organ_masks

GAZE_METRICS = {"cc": saliency.cc, "kl": saliency.kl_div, "hs": saliency.hs, "sim": saliency.sim}
FIXATION_METRICS = {"nss": saliency.nss, "auc_judd": saliency.auc_judd}
ORGAN_NAMES = ("left_lung", "right_lung", "mediastanum", "aortic_knob")
CACHE = "leaderboard_eval.json"


def _truth(examples: list[dict], grid: tuple[int, int], sigmas: list[np.ndarray]) -> tuple[list, list]:
    """Readers' gaze maps [grid] (None without gaze) and fixation masks on the grid, per image; `sigmas` [2] per
    image in its resized pixels."""
    from gazejax.data import gaze as gaze_lib

    maps, fixed = [], []
    for ex, sigma in zip(examples, sigmas):
        valid = ex["fixation_valid"]
        if not valid.any():
            maps.append(None), fixed.append(None)
            continue
        frame = ex["image"].shape[:2]
        pts = ex["fixations"][valid]
        maps.append(gaze_lib.render_gaussians(pts, ex["fixation_weights"][valid], sigma, frame, grid))
        mask = np.zeros(grid, bool)
        idx = np.floor((pts + 0.5) * np.asarray(grid) / np.asarray(frame)).astype(int)
        ok = ((idx >= 0) & (idx < np.asarray(grid))).all(axis=1)
        mask[tuple(idx[ok].T)] = True
        fixed.append(mask)
    return maps, fixed


def _apply(model, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The hook over all images in fixed-size batches: probabilities [N, C] and maps [N, h, w] (or None)."""
    probs, maps = [], []
    for i in range(0, len(images), batch):
        part = images[i:i + batch]
        padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
        out = model.method.inference.run(model.predict, padded, model.config, model.stage)
        probs.append(np.asarray(out["probs"])[:len(part)])
        if out.get("map") is not None:
            maps.append(np.asarray(out["map"], np.float32)[:len(part)])
    return np.concatenate(probs), (np.concatenate(maps) if maps else None)


def _data_config(config):
    """`config` with the data fields `pipeline.bundle_parts` reads that a method's config may leave out (its own
    gaze maps are not needed: the leaderboard renders one truth for every row). The test split depends only on
    data.split and data.test_seed, so every row sees the same test images."""
    import copy

    out = copy.deepcopy(config)
    with out.unlocked():
        d = out.data
        for key, value in (("gaze_grids", {}), ("gaze_kind", "gaussian"), ("gaze_sigma", 1.0), ("augment", None)):
            if key in d:  # replaced whatever its type (a config may hold e.g. gaze_sigma="dataset")
                del d[key]
            d[key] = value
        for key, value in (("ratio", 1.0), ("label_policy", ""), ("seed", 0)):
            if key not in d:
                d[key] = value
    return out


def probe_auroc(cell_dir: str) -> float | None:
    """The test linear-probe macro AUROC a self-supervised run's own evaluation logged after pretraining
    (results.json "test@pretrain" / "probe_auroc"); None for a cell without one."""
    path = os.path.join(cell_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        value = json.load(f).get("test@pretrain", {}).get("probe_auroc")
    return None if value is None else float(value)


def pretrain_loss(cell_dir: str, last: int = 5) -> float | None:
    """The contrastive pretraining loss (`train/loss_contrast`: NT-Xent for SimCLR, GazAT's L_contrast) at the end
    of pretraining: the mean of its `last` logged values in metrics.jsonl (`engine.logs.read_metrics`, which skips a
    line cut by a kill); None for a cell that logs none."""
    from gazejax.engine.logs import read_metrics

    values = [float(r["train/loss_contrast"]) for r in read_metrics(cell_dir) if "train/loss_contrast" in r]
    return float(np.mean(values[-last:])) if values else None


def evaluate_cell(cell_dir: str, config, stage: str | None, spec: dict) -> dict:
    """Scores one finished cell (cached in `<cell>/leaderboard_eval.json`), plus its `probe_auroc` and
    `pretrain_loss`, with that loss's chance value ln(2N - 1) for N images a batch (`pretrain_chance`)."""
    loss = pretrain_loss(cell_dir)
    chance = float(np.log(2 * int(config.batch_size) - 1)) if loss is not None else None
    return {**_score_cell(cell_dir, config, stage, spec), "probe_auroc": probe_auroc(cell_dir),
            "pretrain_loss": loss, "pretrain_chance": chance}


def _score_cell(cell_dir: str, config, stage: str | None, spec: dict) -> dict:
    from gazejax import export
    from gazejax.data.cxr import pipeline
    from gazejax.inference import common

    path = os.path.join(cell_dir, CACHE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    model_dir = os.path.join(cell_dir, "model")
    if not os.path.exists(os.path.join(model_dir, "model.json")):
        export.export(cell_dir, model_dir, stage, overwrite=True)
    model = common.load_models([model_dir])[0]
    test = pipeline.bundle_parts(_data_config(config))["splits"]["test"]
    examples = [test.examples[i] for i in range(len(test))]
    images = np.stack([ex["image"] for ex in examples]).astype(np.float32)
    probs, maps = _apply(model, images, int(config.eval.get("batch", 8)))
    h, w = images.shape[1:3]
    grid = (h // int(spec.get("stride", 16)), w // int(spec.get("stride", 16)))
    source_sigma = pipeline.source_pixels(config, float(spec.get("gaze_sigma_dicom", 150.0)))
    truth, fixed = _truth(examples, grid, [source_sigma * np.asarray(r.scale_yx, np.float64) for r in test.records])
    batch = {"label": np.array([int(ex["label"]) for ex in examples]), "image": images}
    if "organ_masks" in examples[0]:
        batch.update(organ_masks=np.stack([ex["organ_masks"] for ex in examples]),
                     has_organ_masks=np.stack([ex["has_organ_masks"] for ex in examples]))
    organs, defined = organ_masks(batch, ORGAN_NAMES)
    run = json.load(open(os.path.join(cell_dir, "run.json"))) if os.path.exists(os.path.join(cell_dir, "run.json")) \
        else {}
    result = {"ids": [r.dicom_id for r in test.records], "labels": batch["label"].tolist(), "probs": probs.tolist(),
              "map": None if maps is None else minmax(resize_maps(maps, grid)).tolist(), "params": run.get("params"),
              "train_seconds": run.get("train_seconds"), "map_name": model.meta.get("map_name", ""),
              "truth": [None if t is None else t.tolist() for t in truth],
              "fixations": [None if f is None else f.tolist() for f in fixed],
              "organs": [resize_maps(o[None].astype(np.float32), grid)[0].tolist() if d else None
                         for o, d in zip(organs, defined)]}
    write_json(path, result, indent=None)
    return result


def image_scores(maps: np.ndarray | None, ev: dict) -> list[dict]:
    """Per test image: the gaze-agreement metrics and the pointing hit of `maps` [N, h, w] (the cell's or a
    control's) against the common truth; {} where undefined (no gaze / no organ)."""
    out = []
    for i in range(len(ev["labels"])):
        scores: dict[str, float] = {}
        if maps is not None and ev["truth"][i] is not None:
            m, t, fix = maps[i], np.asarray(ev["truth"][i]), np.asarray(ev["fixations"][i], bool)
            scores.update({k: f(m, t) for k, f in GAZE_METRICS.items()})
            if fix.any() and not fix.all():
                scores.update({k: f(m, fix) for k, f in FIXATION_METRICS.items()})
        if maps is not None and ev["organs"][i] is not None and np.ptp(maps[i]) > 0:
            peak = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
            scores["pointing"] = float(np.asarray(ev["organs"][i])[peak] >= 0.5)
        out.append(scores)
    return out


def control_maps(kind: str, ev: dict, seed: int) -> np.ndarray:
    if kind != "random":
        raise ValueError(f"leaderboard control {kind!r}: known controls: random")
    shape = np.asarray(ev["truth"][next(i for i, t in enumerate(ev["truth"]) if t is not None)]).shape
    return np.random.default_rng(seed).random((len(ev["labels"]), *shape)).astype(np.float32)


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _aurocs(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Macro and per-class one-vs-rest AUROC of one (re)sample of test images."""
    per_class = cls.auroc_per_class(labels, probs)
    return {"auroc": _mean(per_class), **{f"auroc_{n}": v for n, v in zip(names, per_class)}}


def row_summary(evals: list[dict], names: tuple[str, ...], maps: list[np.ndarray | None], spec: dict) -> dict:
    """One row from its cells (one per seed, same test images): mean scores, CIs and per-image / per-seed values
    for the paired tests."""
    labels = np.asarray(evals[0]["labels"])
    per_seed = [cls.summary(labels, np.asarray(e["probs"]), names) for e in evals]
    mean_probs = np.mean([np.asarray(e["probs"]) for e in evals], axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cis = stats.bootstrap_ci(lambda idx: _aurocs(labels[idx], mean_probs[idx], names), len(labels),
                                 n_boot=int(spec.get("bootstrap", 1000)))
    images = [image_scores(m, e) for m, e in zip(maps, evals)]
    keys = sorted({k for seed in images for s in seed for k in s})
    per_image = {k: [_mean(seed[i].get(k) for seed in images) for i in range(len(labels))] for k in keys}
    out = {"auroc": _mean(s["auroc"] for s in per_seed), "auroc_std": float(np.std([s["auroc"] for s in per_seed],
                                                                                   ddof=1)) if len(evals) > 1
           else float("nan"), "auroc_ci": cis["auroc"], "accuracy": _mean(s["accuracy"] for s in per_seed),
           "seeds": len(evals), "seed_auroc": [s["auroc"] for s in per_seed], "per_image": per_image,
           "labels": labels, "mean_probs": mean_probs, "probe_auroc": _mean(e.get("probe_auroc") for e in evals),
           "pretrain_loss": _mean(e.get("pretrain_loss") for e in evals),
           "pretrain_chance": _mean(e.get("pretrain_chance") for e in evals),
           "params": _mean(e.get("params") for e in evals), "train_seconds": _mean(e.get("train_seconds")
                                                                                   for e in evals)}
    out.update({f"auroc_{n}": _mean(s[f"auroc_{n}"] for s in per_seed) for n in names})
    out.update({f"auroc_{n}_ci": cis[f"auroc_{n}"] for n in names})
    out.update({k: _mean(v) for k, v in per_image.items()})
    return out


def _ttest_text(t: dict, unit: str) -> str:
    if not np.isfinite(t["t"]) and t["n"] > 1 and t["mean_diff"] == 0:
        return f"identical values (n={t['n']} {unit})"
    return f"t={t['t']:.2f}, p={t['p']:.3g} (n={t['n']} {unit})"


def paired(row: dict, ref: dict, n_boot: int = 1000) -> dict[str, str]:
    """Tests of a row against the reference: macro AUROC by a paired bootstrap over the test images (seed-mean
    probabilities, the same resamples for both rows) and by a paired t-test over seeds; CC by a paired t-test over
    images."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        labels = row["labels"]
        if len(labels) == len(ref["labels"]) and np.array_equal(labels, ref["labels"]):
            b = stats.paired_bootstrap_test(lambda idx: cls.auroc_ovr(labels[idx], row["mean_probs"][idx]),
                                            lambda idx: cls.auroc_ovr(labels[idx], ref["mean_probs"][idx]),
                                            len(labels), n_boot=n_boot)
            p = f"p={b['p']:.3g}" if b["p"] > 0 else f"p<{1 / max(b['n_boot'], 1):.2g}"  # none of the resamples
            out["auroc_boot"] = f"{b['diff']:+.3f} [{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}], {p} (n={b['n']} images)"
        n = min(len(row["seed_auroc"]), len(ref["seed_auroc"]))
        if n > 1:
            out["auroc"] = _ttest_text(stats.paired_ttest(row["seed_auroc"][:n], ref["seed_auroc"][:n]), "seeds")
        a, b = row["per_image"].get("cc"), ref["per_image"].get("cc")
        if a and b:
            out["cc"] = _ttest_text(stats.paired_ttest(a, b), "images")
    return out


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _pretrain_text(row: dict) -> str:
    """"3.870 (4.143)": the end-of-pretraining contrastive loss and its chance value ln(2N - 1)."""
    loss, chance = row.get("pretrain_loss"), row.get("pretrain_chance")
    return "n/a" if loss is None or not np.isfinite(loss) else f"{loss:.3f} ({_fmt(chance)})"


def write(workdir: str, rows: dict[str, dict], names: tuple[str, ...], spec: dict) -> str:
    """leaderboard.csv, leaderboard.md and leaderboard.png of the row summaries; returns the markdown."""
    ref = spec.get("reference")
    gaze = ("cc", "kl", "nss", "auc_judd", "hs", "sim", "pointing")
    aurocs = ["auroc", *(f"auroc_{n}" for n in names)]
    columns = (["row", "seeds", "auroc_std", "accuracy", "probe_auroc", "pretrain_loss", "pretrain_chance"]
               + [f"{k}{e}" for k in aurocs for e in ("", "_ci_low", "_ci_high")] + list(gaze)
               + ["params", "train_seconds"])
    with open(os.path.join(workdir, "leaderboard.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name, r in rows.items():
            bounds = {f"{k}_ci_{e}": r[f"{k}_ci"][i] for k in aurocs for i, e in enumerate(("low", "high"))}
            values = {**r, **bounds, "row": name}
            writer.writerow([values.get(c, "") for c in columns])
    from gazejax.report import markdown_table

    def with_ci(r: dict, key: str) -> str:
        return f"{_fmt(r[key])} [{_fmt(r[key + '_ci'][0])}, {_fmt(r[key + '_ci'][1])}]"

    table = [[name, r["seeds"], f"{_fmt(r['auroc'])} ({_fmt(r['auroc_std'])})",
              f"[{_fmt(r['auroc_ci'][0])}, {_fmt(r['auroc_ci'][1])}]", _fmt(r["accuracy"]), _fmt(r["probe_auroc"]),
              _pretrain_text(r)] + [with_ci(r, f"auroc_{n}") for n in names]
             + [_fmt(r.get(k, float("nan"))) for k in gaze]
             + [f"{r['params'] / 1e6:.2f} M" if np.isfinite(r["params"]) else "n/a", _fmt(r["train_seconds"], 0)]
             for name, r in rows.items()]
    header = (["row", "seeds", "macro AUROC (std)", "95 % CI", "accuracy", "probe AUROC", "pretrain loss (chance)"]
              + [f"AUROC {n} [95 % CI]" for n in names]
              + ["CC", "KL", "NSS", "AUC-Judd", "HS", "SIM", "pointing", "params", "train s"])
    n_boot = int(spec.get("bootstrap", 1000))
    tests = [[name, *(paired(r, rows[ref], n_boot).get(k, "n/a") for k in ("auroc_boot", "auroc", "cc"))]
             for name, r in rows.items() if ref in rows and name != ref]
    lines = [f"# {spec.get('title', 'Leaderboard')}", "", spec.get("note", ""), "", markdown_table(header, table),
             "", f"Paired tests against `{ref}` (macro AUROC: difference [95 % CI] by a paired bootstrap over the test "
             "images, and a t-test over seeds; CC: t-test over images):", "",
             markdown_table(["row", "macro AUROC difference (bootstrap)", "macro AUROC (seeds)", "CC"], tests), "",
             "![AUROC vs gaze agreement](leaderboard.png)", ""]
    markdown = "\n".join(lines)
    write_text(os.path.join(workdir, "leaderboard.md"), markdown)
    _figure(rows, os.path.join(workdir, "leaderboard.png"))
    return markdown


def _figure(rows: dict[str, dict], path: str) -> None:
    from gazejax import report as R

    plt = R._plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in rows.items():
        if np.isfinite(r.get("cc", np.nan)) and np.isfinite(r["auroc"]):
            ax.scatter(r.get("cc"), r["auroc"])
            ax.annotate(name, (r.get("cc"), r["auroc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("gaze agreement: CC of the explanation map with the readers' gaze")
    ax.set_ylabel("macro AUROC (mean over seeds)")
    R.save_figure(fig, path)


def build(workdir: str, cells: list[dict], grid: dict, name_fn, load_config) -> str | None:
    """Scores every finished cell of `grid` (its "leaderboard" spec: rows by cell["row"], stages by row, controls,
    reference) and writes the leaderboard; None when no row has a finished cell."""
    spec = grid["leaderboard"]
    by_row: dict[str, list[tuple[dict, dict]]] = {}
    for cell in cells:
        cell_dir = os.path.join(workdir, "cells", name_fn(cell))
        if not os.path.exists(os.path.join(cell_dir, "results.json")):
            continue
        config = load_config(cell)
        ev = evaluate_cell(cell_dir, config, spec.get("stages", {}).get(cell["row"]), spec)
        by_row.setdefault(cell["row"], []).append((cell, ev))
    if not by_row:
        return None
    first = next(iter(by_row.values()))[0][0]
    names = tuple(spec.get("classes") or load_config(first).get("classes", ("Normal", "CHF", "pneumonia")))
    rows = {}
    for row, items in by_row.items():
        evals = [ev for _, ev in items]
        maps = [None if ev["map"] is None else np.asarray(ev["map"], np.float32) for ev in evals]
        rows[row] = row_summary(evals, names, maps, spec)
    for control, (kind, source) in spec.get("controls", {}).items():
        if source in by_row:
            evals = [ev for _, ev in by_row[source]]
            rows[control] = row_summary(evals, names, [control_maps(kind, ev, i) for i, ev in enumerate(evals)], spec)
    return write(workdir, rows, names, spec)
