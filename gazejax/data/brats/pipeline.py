"""BraTS data for training and evaluation: case records from the npy cache or the TFDS data set, seeded
folds/ratios and per-example transforms. Gaze fixations are rendered analytically at the SAN output grid (1/16 of
the crop) after every geometric augmentation, so the gaze target always matches the image it supervises.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gazejax.data import gaze as gaze_lib
from gazejax.data import splits, transforms3d
from gazejax.data.brats.records import SAN_STRIDE, CaseRecord
from gazejax.data.errors import DataError

log = logging.getLogger("gazejax")


def tfds_records(root: str, data_dir: str, readers: str, sigma: float, split: str = "train") -> list[CaseRecord]:
    """The cases of the TFDS `brats2020` data set in `data_dir` (`config.data.source="tfds"`), built there from the
    BraTS folder `root` first if it is not yet; records read their arrays from the array_record files (random
    access) and give the same training examples as `prepare_case`'s cache. Needs tensorflow-datasets, not TF (the
    optional `tfds` extra: imported here, not at module level, so the default files source runs without it)."""
    from gazejax.data.tfds import brats2020 as tfds_brats2020

    return tfds_brats2020.case_records(data_dir, root, readers, sigma, split=split)


def regions_onehot(seg: np.ndarray) -> np.ndarray:
    """uint8 labels -> float32 [..., 3] targets in channel order [ET, TC, WT] (ET={4}, TC={1,4}, WT={1,2,4})."""
    et = seg == 4
    tc = et | (seg == 1)
    wt = tc | (seg == 2)
    return np.stack([et, tc, wt], axis=-1).astype(np.float32)


def render_gaze(points: np.ndarray, weights: np.ndarray, crop: tuple, sigma: float, norm: float) -> np.ndarray:
    """Gaze target [d, h, w, 1] at the SAN grid of a `crop`-shaped window, scaled by the case's full-map max."""
    grid = tuple(s // SAN_STRIDE for s in crop)
    if len(points) == 0 or norm <= 0:
        return np.zeros(grid + (1,), np.float32)
    m = gaze_lib.render_gaussians(points, weights, sigma, crop, grid, normalize=None)
    return np.clip(m / norm, 0.0, 1.0).astype(np.float32)[..., None]


def wt_lowres(seg: np.ndarray) -> np.ndarray:
    """Whole-tumour share of each SAN-grid cell [d, h, w, 1] (the target of `ours_no_gaze`)."""
    wt = (seg > 0).astype(np.float32)
    s = SAN_STRIDE
    d, h, w = (n // s for n in seg.shape)
    return wt[:d * s, :h * s, :w * s].reshape(d, s, h, s, w, s).mean(axis=(1, 3, 5))[..., None]


def whole_volume_shape(records: list[CaseRecord], multiple: int = SAN_STRIDE) -> tuple[int, int, int]:
    """The one training shape that holds every record's brain box (config `data.whole_volume`): the largest box
    extent per axis rounded up to `multiple` (16, SAN's grid; the least common multiple with `mesh.spatial` when
    volumes are split), with the two in-plane sides (X, Y) made equal so that the open_brats2020 axis swap stays
    possible. Boxes are zero-padded to it at a random position (`transforms3d.random_pad_crop`), never cropped."""
    if not records:
        raise ValueError("data.whole_volume: no training cases to size the whole-volume shape from")
    extent = np.max([[b - a for a, b in r.bbox] for r in records], axis=0)
    x, y, z = (-(-int(n) // multiple) * multiple for n in extent)
    return (max(x, y), max(x, y), z)


def make_train_example(record: CaseRecord, crop: tuple, sigma: float, rng: np.random.Generator,
                       augment_p: float = 0.5, augment_scheme: str = "per_step") -> dict[str, np.ndarray]:
    """Random pad/crop + augmentation of one cached case, gaze rendered after the geometric transforms.

    `augment_scheme` is a `transforms3d.AUGMENT_SCHEMES` entry (config `data.augment`), `augment_p` its
    probability (`data.augment_p`); augment_p = 0 turns augmentation off."""
    image, seg = np.asarray(record.image()), np.asarray(record.seg())
    (image, seg), offset = transforms3d.random_pad_crop([image, seg], crop, rng)
    points = record.points - np.asarray(offset, np.float64)
    if augment_p > 0:
        image, seg, points = transforms3d.augment(image, seg, points, rng, p=augment_p, scheme=augment_scheme)
    return {
        "image": np.ascontiguousarray(image, np.float32),
        "target": regions_onehot(seg),
        "gaze": render_gaze(points, record.weights, crop, sigma, record.gaze_norm),
        "has_gaze": np.asarray(record.has_gaze),
        "wt_lowres": wt_lowres(seg),
        "survival": np.asarray(record.survival_class, np.int32),
    }


def build_splits(records: list[CaseRecord], cfg: Any, root: str = "") -> dict[str, list[CaseRecord]]:
    """train / val / test records: fold `cfg.fold` of a seeded K-fold is the test set; a seeded share of the rest
    is the validation set (model selection only); the training set is `cfg.ratio` of what remains, drawn from the
    cases with gaze when `cfg.ratio_pool` is "preferred" (the paper) or from all of them ("all").

    A case without a segmentation is an error naming it, or with `cfg.skip_incomplete` skipped with a warning
    that lists every skipped case (never a silent drop: it would shift every fold)."""
    labelled = [r for r in records if r.has_seg]
    missing = [r.case_id for r in records if not r.has_seg]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        if not cfg.get("skip_incomplete", False):
            raise DataError(f"{root or cfg.get('root', '')}: {len(missing)} training case(s) "
                            f"without a segmentation ({shown}); add the *_seg.nii.gz files, or set "
                            f"data.skip_incomplete=True to leave these cases out")
        log.warning("data.skip_incomplete: skipping %d of %d cases without a segmentation: %s", len(missing),
                    len(records), ", ".join(missing))
    ids = [r.case_id for r in labelled]
    rest, test = splits.kfold(ids, cfg.num_folds, cfg.fold, seed=cfg.split_seed)
    train_pool, val = splits.holdout(rest, cfg.val_fraction, seed=cfg.split_seed)
    with_gaze = [r.case_id for r in labelled if r.has_gaze]
    train = splits.ratio_subset(train_pool, cfg.ratio, seed=cfg.split_seed, prefer=with_gaze,
                                pool=cfg.ratio_pool, what="data.ratio_pool")
    by_id = {r.case_id: r for r in labelled}
    return {"train": [by_id[i] for i in train], "val": [by_id[i] for i in val], "test": [by_id[i] for i in test]}
