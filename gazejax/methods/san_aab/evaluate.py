"""Whole-volume 3D inference and BraTS evaluation of one case, in one of two modes (`EVAL_MODES`, config
`eval.mode`):

- "whole": one forward pass over the case's brain box (the cached non-zero crop) zero-padded at the end to a
  multiple of 16, as open_brats2020 infers. GroupNorm then normalises over the whole brain, not over a 128^3 crop
  as in training; one compilation per distinct padded shape.
- "window": sliding windows of the training crop size (GroupNorm statistics as in training); a window that sees
  little tumour normalises differently from one that sees much, so overlapping windows can disagree.

Windows start at multiples of the SAN stride so the 1/16-resolution gaze outputs of overlapping windows land on one
common grid; overlapping predictions are averaged with uniform weights. One compiled shape serves every case: the
window batch is padded to a fixed size.
"""
from __future__ import annotations

import itertools
import os
from typing import Callable

import numpy as np

from gazejax.data.brats.records import SAN_STRIDE, CaseRecord
from gazejax.metrics import saliency, segmentation


def window_starts(length: int, window: int, overlap: float, align: int) -> list[int]:
    """Start indices covering [0, length) with windows of `window` voxels, overlap share `overlap`, aligned."""
    if length <= window:
        return [0]
    step = max(align, int(window * (1 - overlap)) // align * align)
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def pad_volume(image: np.ndarray, window: tuple, multiple: int) -> tuple[np.ndarray, tuple]:
    """Zero-pads [X, Y, Z, C] at the end to at least `window` and a multiple of `multiple` per axis."""
    pads = []
    for n, w in zip(image.shape[:3], window):
        target = max(w, -(-n // multiple) * multiple)
        pads.append((0, target - n))
    return np.pad(image, pads + [(0, 0)]), tuple(p[1] for p in pads)


def sliding_window(predict: Callable, image: np.ndarray, window: tuple, overlap: float, batch: int
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Sigmoid segmentation probabilities [X, Y, Z, 3] and gaze probabilities at 1/16 (or None) of `image`.

    `image` must already be padded (see `pad_volume`). `predict(images [B, *window, C]) -> outputs dict`.
    """
    shape = image.shape[:3]
    starts = [window_starts(n, w, overlap, SAN_STRIDE) for n, w in zip(shape, window)]
    corners = list(itertools.product(*starts))
    seg_sum = np.zeros(shape + (3,), np.float32)
    seg_cnt = np.zeros(shape + (1,), np.float32)
    grid = tuple(n // SAN_STRIDE for n in shape)
    gaze_sum, gaze_cnt = np.zeros(grid + (1,), np.float32), np.zeros(grid + (1,), np.float32)
    has_gaze = False
    for i in range(0, len(corners), batch):
        chunk = corners[i:i + batch]
        crops = [image[x:x + window[0], y:y + window[1], z:z + window[2]] for x, y, z in chunk]
        crops += [crops[-1]] * (batch - len(crops))  # fixed batch -> one compiled shape
        out = predict(np.stack(crops))
        seg = 1.0 / (1.0 + np.exp(-np.asarray(out["seg"], np.float32)))
        gz = out.get("gaze")
        for k, (x, y, z) in enumerate(chunk):
            sl = (slice(x, x + window[0]), slice(y, y + window[1]), slice(z, z + window[2]))
            seg_sum[sl] += seg[k]
            seg_cnt[sl] += 1
            if gz is not None:
                has_gaze = True
                gx, gy, gzz = x // SAN_STRIDE, y // SAN_STRIDE, z // SAN_STRIDE
                g = 1.0 / (1.0 + np.exp(-np.asarray(gz[k], np.float32)))
                gsl = (slice(gx, gx + g.shape[0]), slice(gy, gy + g.shape[1]), slice(gzz, gzz + g.shape[2]))
                gaze_sum[gsl] += g
                gaze_cnt[gsl] += 1
    seg_prob = seg_sum / np.maximum(seg_cnt, 1)
    gaze_prob = gaze_sum / np.maximum(gaze_cnt, 1) if has_gaze else None
    return seg_prob, gaze_prob


EVAL_MODES = ("whole", "window")


def infer_case(predict: Callable, image: np.ndarray, mode: str, window: tuple, overlap: float, batch: int,
               gaze_window: tuple | None = None) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """(seg_prob [*padded, 3], gaze_prob [*padded/16, 1] or None, padded shape the gaze grid refers to) of the
    brain-box `image` [X, Y, Z, 4] in `mode` ("whole" ignores window/overlap/batch; see the module docstring)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"eval.mode: unknown mode {mode!r}; expected one of {', '.join(EVAL_MODES)}")
    if mode == "whole":
        padded, _ = pad_volume(image, (1, 1, 1), SAN_STRIDE)
        seg_prob, gaze_prob = sliding_window(predict, padded, padded.shape[:3], 0.0, 1)
        return seg_prob, gaze_prob, padded.shape[:3]
    padded, _ = pad_volume(image, window, SAN_STRIDE)
    seg_prob, gaze_prob = sliding_window(predict, padded, window, overlap, batch)
    gaze_frame = padded.shape[:3]
    if gaze_window and gaze_prob is not None:
        whole, _ = pad_volume(image, gaze_window, SAN_STRIDE)
        _, gaze_prob = sliding_window(predict, whole, tuple(gaze_window), overlap, 1)
        gaze_frame = whole.shape[:3]
    return seg_prob, gaze_prob, gaze_frame


def probs_to_labels(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[..., 3] sigmoid outputs (ET, TC, WT) -> BraTS labels (ET->4, TC\\ET->1, WT\\TC->2)."""
    on = prob > threshold
    return segmentation.labels_from_regions(on[..., 0], on[..., 1], on[..., 2])


def gaze_scores(pred: np.ndarray, record: CaseRecord, padded_shape: tuple, sigma: float) -> dict[str, float]:
    """Saliency metrics of the SAN gaze map against the readers' gaze map on the same 1/16 grid."""
    from gazejax.data import gaze as gaze_lib

    grid = pred.shape[:3]
    truth = gaze_lib.render_gaussians(record.points, record.weights, sigma, padded_shape, grid, normalize="max")
    fix = np.zeros(grid, bool)
    idx = np.floor((record.points + 0.5) / SAN_STRIDE).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(grid)), axis=1)
    fix[tuple(idx[ok].T)] = True
    p = pred[..., 0]
    return {"gaze_cc": saliency.cc(p, truth), "gaze_kl": saliency.kl_div(p, truth), "gaze_sim": saliency.sim(p, truth),
            "gaze_nss": saliency.nss(p, fix) if fix.any() else float("nan"),
            "gaze_auc_judd": saliency.auc_judd(p, fix) if fix.any() and not fix.all() else float("nan")}


def evaluate_case(predict: Callable, record: CaseRecord, window: tuple, overlap: float, batch: int, sigma: float,
                  out_dir: str | None = None, gaze_window: tuple | None = None, mode: str = "window") -> dict:
    """Segments one cached case, scores it in the original geometry, optionally writes the prediction NIfTI.

    mode "whole": one pass over the padded brain box. mode "window": sliding windows of `window` (the training
    crop: GroupNorm statistics then match training); with `gaze_window`, the gaze map comes from a separate pass
    with that (larger) window, normally one pass over the whole volume: SAN is the network that skims the whole
    scan, and per-window GroupNorm makes it rank saliency within each window, so maps stitched from windows that
    miss the tumour are not comparable across windows.
    """
    image = np.asarray(record.image())
    seg_prob, gaze_prob, gaze_frame = infer_case(predict, image, mode, window, overlap, batch, gaze_window)
    crop = image.shape[:3]
    labels_crop = probs_to_labels(seg_prob[:crop[0], :crop[1], :crop[2]])
    labels = np.zeros(record.shape, np.uint8)
    labels[tuple(slice(a, b) for a, b in record.bbox)] = labels_crop
    result = {"case_id": record.case_id, "labels_crop": labels_crop, "prob_crop": seg_prob[:crop[0], :crop[1], :crop[2]],
              "gaze_prob": gaze_prob, "scores": {}}
    gt = record.full_seg()
    if gt is not None:
        result["scores"].update(segmentation.brats_scores(labels, gt, spacing=record.spacing))
    if gaze_prob is not None and record.has_gaze:
        result["scores"].update(gaze_scores(gaze_prob, record, gaze_frame, sigma))
    if out_dir:
        import nibabel as nib

        os.makedirs(out_dir, exist_ok=True)
        nib.save(nib.Nifti1Image(labels, record.affine), os.path.join(out_dir, f"{record.case_id}.nii.gz"))
    return result
