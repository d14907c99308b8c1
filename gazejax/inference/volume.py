"""`gazejax.predict` for BraTS-family models: NIfTI cases in, label maps (0/1/2/4) out in each input's exact geometry.

Inputs: one case folder, a folder of case folders (BraTS layout, with or without seg), or four files given as
`flair=...,t1=...,t1ce=...,t2=...`. Each case is read and preprocessed as in training (`records.preprocess`: crop to
the non-zero box, per-modality percentile min-max), inferred by each model's `Inference.run` (the evaluation's own
`infer_case`), probabilities averaged over models (and mirrored copies with `tta`), thresholded as in evaluation,
and pasted back into the full array: `<case_id>.nii.gz` (uint8 labels, the FLAIR's affine and header),
`<case_id>_gaze.nii.gz` (SAN's gaze probabilities, each 1/16 cell filling its 16^3 voxels), and with
`save_probabilities` `<case_id>_probabilities.nii.gz` (float32 [X, Y, Z, 3]: ET, TC, WT).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import Any

import numpy as np

from gazejax.data.brats import reader as brats
from gazejax.data.brats import records as brats_records
from gazejax.data.errors import DataError
from gazejax.data.io import atomic_path
from gazejax.inference import common
from gazejax.metrics import segmentation

log = logging.getLogger("gazejax")

MIRROR_AXES = tuple(axes for n in range(4) for axes in itertools.combinations(range(3), n))  # 8 mirror copies


@dataclasses.dataclass(frozen=True)
class CaseInput:
    case_id: str
    paths: dict
    where: str  # the folder or files, for messages


def parse_files(text: str) -> CaseInput:
    """`flair=A,t1=B,t1ce=C,t2=D` -> the case of those files (id: the FLAIR's name without `_flair.nii[.gz]`)."""
    paths = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in brats.MODALITIES:
            raise ValueError(f"--input: {part!r} is not <modality>=<file> with a modality of "
                             f"{', '.join(brats.MODALITIES)}")
        paths[key.strip()] = os.path.abspath(value.strip())
    missing = [m for m in brats.MODALITIES if m not in paths]
    if missing:
        raise ValueError(f"--input: no {', '.join(missing)} file given (need {', '.join(brats.MODALITIES)})")
    name = os.path.basename(paths["flair"])
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    case_id = name[: -len("_flair")] if name.lower().endswith("_flair") else name
    return CaseInput(case_id, paths, ", ".join(paths.values()))


def discover(path: str) -> list[CaseInput]:
    """The cases of `--input` (module docstring); a case folder's files are found as the training reader finds
    them, when it is read (a broken folder is then reported and skipped, not fatal)."""
    if "=" in path:
        return [parse_files(path)]
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input {path}: no such folder (give a case folder, a folder of case folders, or "
                                f"flair=...,t1=...,t1ce=...,t2=...)")
    folders = [path] if brats.is_case_folder(path) else brats.list_cases(path)
    return [CaseInput(os.path.basename(os.path.normpath(f)), {}, f) for f in folders]


def read_input(case: CaseInput) -> dict:
    """Reads and preprocesses one case: {"image" (brain box), "meta" (bbox, shape), "header" (the FLAIR's), ...}."""
    import nibabel as nib

    if case.paths:
        case_id, paths = case.case_id, case.paths
    else:
        case_id, paths, _ = brats.case_files(case.where)
    raw = brats.read_volumes(case_id, paths)
    image, _, meta = brats_records.preprocess(raw)
    header = nib.load(paths["flair"]).header.copy()
    return {"image": image, "meta": meta, "header": header, "affine": raw["affine"], "spacing": raw["spacing"]}


def infer(models: list, image: np.ndarray, tta: bool) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """Mean region probabilities [X, Y, Z, 3] over models (and mirrored copies), mean gaze grid over the models
    that have one (un-mirrored passes only: the zero padding at the end does not mirror), and the gaze frame."""
    total, count, gaze, n_gaze, frame = None, 0, None, 0, None
    for m in models:
        for axes in MIRROR_AXES if tta else ((),):
            out = m.method.inference.run(m.predict, np.flip(image, axes) if axes else image, m.config, m.stage)
            prob = np.flip(out["seg_prob"], axes) if axes else out["seg_prob"]
            total = np.array(prob, np.float32) if total is None else total + prob
            count += 1
            if not axes and out.get("gaze_prob") is not None:
                gaze = np.array(out["gaze_prob"], np.float32) if gaze is None else gaze + out["gaze_prob"]
                n_gaze, frame = n_gaze + 1, out["gaze_frame"]
    return total / count, (gaze / n_gaze if n_gaze else None), frame


def _paste(values: np.ndarray, meta: dict, dtype) -> np.ndarray:
    """Brain-box `values` [x, y, z, ...] into zeros of the full array shape."""
    full = np.zeros(tuple(meta["shape"]) + values.shape[3:], dtype)
    full[tuple(slice(a, b) for a, b in meta["bbox"])] = values
    return full


def gaze_volume(gaze: np.ndarray, frame: tuple, meta: dict) -> np.ndarray:
    """The 1/16 gaze grid [gx, gy, gz] of the padded box `frame` as voxels of the full volume (each cell fills its
    16^3 voxels; the box's padding cut off; zeros outside the box)."""
    stride = [f // g for f, g in zip(frame, gaze.shape)]
    up = gaze
    for axis, s in enumerate(stride):
        up = np.repeat(up, s, axis=axis)
    crop = meta["crop_shape"]
    return _paste(up[:crop[0], :crop[1], :crop[2]].astype(np.float32), meta, np.float32)


def save_nifti(path: str, data: np.ndarray, affine: np.ndarray, header: Any) -> None:
    """Writes `data` with the input's affine and header (its data type and scaling replaced by `data`'s),
    atomically."""
    import nibabel as nib

    hdr = header.copy()
    hdr.set_data_dtype(data.dtype)
    hdr.set_slope_inter(None, None)
    img = nib.Nifti1Image(data, affine, header=hdr)
    for code in ("qform", "sform"):  # keep the input's codes (nibabel resets them when it sets the affine)
        _, value = getattr(header, f"get_{code}")(coded=True)
        getattr(img, f"set_{code}")(affine, int(value) if value else 0)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def outputs_of(out_dir: str, case_id: str) -> dict[str, str]:
    return {"labels": os.path.join(out_dir, f"{case_id}.nii.gz"),
            "gaze": os.path.join(out_dir, f"{case_id}_gaze.nii.gz"),
            "probabilities": os.path.join(out_dir, f"{case_id}_probabilities.nii.gz")}


def predict_case(models: list, case: CaseInput, data: dict, out_dir: str, tta: bool, save_probabilities: bool
                 ) -> np.ndarray:
    """Infers one read case and writes its files; returns the full label map."""
    prob, gaze, frame = infer(models, data["image"], tta)
    threshold = float(models[0].meta["preprocessing"].get("threshold", 0.5))
    on = prob > threshold
    labels = _paste(segmentation.labels_from_regions(on[..., 0], on[..., 1], on[..., 2]), data["meta"], np.uint8)
    paths = outputs_of(out_dir, case.case_id)
    if gaze is not None:
        save_nifti(paths["gaze"], gaze_volume(gaze, frame, data["meta"]), data["affine"], data["header"])
    if save_probabilities:
        save_nifti(paths["probabilities"], _paste(prob.astype(np.float32), data["meta"], np.float32), data["affine"],
                   data["header"])
    save_nifti(paths["labels"], labels, data["affine"], data["header"])  # last: its presence marks a done case
    return labels


def ground_truth(labels_root: str, case: CaseInput, data_shape: tuple, affine: np.ndarray) -> np.ndarray:
    """The case's segmentation under `labels_root` (a folder of case folders, or the case's own folder)."""
    folder = labels_root if os.path.basename(os.path.normpath(labels_root)) == case.case_id \
        else os.path.join(labels_root, case.case_id)
    seg = brats.find_seg(folder, case.case_id) if os.path.isdir(folder) else None
    if seg is None:
        raise DataError(f"{case.case_id}: no segmentation <case_id>_seg.nii[.gz] in {folder} (--labels)")
    return brats.read_seg(seg, case.case_id, data_shape, affine, "the prediction")


def _saved_labels(path: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(labels, affine, voxel spacing) of a label map written before."""
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine), img.header.get_zooms()[:3]


def run(models: list, input_path: str, out_dir: str, *, overwrite: bool = False, tta: bool = False,
        save_probabilities: bool = False, labels_root: str | None = None) -> dict:
    """Predicts every case of `input_path` into `out_dir`; returns {"done", "skipped", "failures", "scores"}."""
    from gazejax.engine.logs import ProgressBar

    cases = discover(input_path)
    os.makedirs(out_dir, exist_ok=True)
    failures, scores, done = common.Failures(), {}, 0
    todo = [c for c in cases if overwrite or not os.path.exists(outputs_of(out_dir, c.case_id)["labels"])]
    skipped = len(cases) - len(todo)
    if skipped:
        log.info("%d of %d cases already predicted in %s (skipped; --overwrite redoes them)", skipped, len(cases),
                 out_dir)

    def score(case: CaseInput, load) -> None:  # load() -> (labels, affine, spacing) of the case's prediction
        try:
            labels, affine, spacing = load()
            gt = ground_truth(labels_root, case, labels.shape, affine)
            scores[case.case_id] = segmentation.brats_scores(labels, gt, spacing=spacing)
        except common.INPUT_ERRORS as e:
            failures.add(case.where, e, what="not scored")

    bar = ProgressBar(len(todo), desc="predict", enabled=True)
    for case, data, error in common.prefetch(todo, read_input):
        try:
            if error is not None:
                raise error
            labels = predict_case(models, case, data, out_dir, tta, save_probabilities)
            done += 1
            if labels_root:
                score(case, lambda: (labels, data["affine"], data["spacing"]))
        except common.INPUT_ERRORS as e:
            failures.add(case.where, e)
        bar.update(1)
    bar.close()
    if labels_root:  # cases predicted before (skipped now) are scored from their saved label maps
        predicted_now = {c.case_id for c in todo}
        for case in cases:
            if case.case_id not in predicted_now:
                score(case, lambda case=case: _saved_labels(outputs_of(out_dir, case.case_id)["labels"]))
    return {"total": len(cases), "done": done, "skipped": skipped, "failures": failures, "scores": scores}
