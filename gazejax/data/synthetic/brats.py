"""Synthetic BraTS 2020 in the real on-disk layout: skull-stripped brain phantoms with a learnable tumour, survival
and name-mapping tables, and gazejax fixation CSVs from expert (tumour-bound) and non-expert (wandering) readers.

`python -m gazejax.data.synthetic brats --out DIR --cases 30 --seed 0` or `generate(...)` from code.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from gazejax.data.brats.reader import MODALITIES

TRAIN_DIR = "MICCAI_BraTS2020_TrainingData"
VALIDATION_DIR = "MICCAI_BraTS2020_ValidationData"
MARKER = ".gazejax_synthetic_brats.json"
_VERSION = 2  # bump when the generated data change, so cached sets are rebuilt
# Mean intensity of each tissue per modality (flair, t1, t1ce, t2), as a fraction of the modality's full scale.
# Edema is bright on FLAIR/T2, the enhancing rim bright on T1ce, necrosis dark on T1ce, all tumour dark on T1.
TISSUES = ("background", "csf", "grey", "white", "edema", "necrosis", "enhancing", "non_enhancing")
CONTRAST = np.array([
    [0.00, 0.00, 0.00, 0.00],  # background (zeroed anyway: skull-stripped)
    [0.10, 0.20, 0.20, 1.00],  # csf: FLAIR suppresses free water
    [0.55, 0.60, 0.58, 0.55],  # grey matter
    [0.40, 0.82, 0.76, 0.35],  # white matter
    [0.95, 0.45, 0.46, 0.85],  # edema (label 2)
    [0.62, 0.25, 0.18, 0.95],  # necrotic core (label 1, HGG)
    [0.75, 0.50, 1.00, 0.68],  # enhancing rim (label 4)
    [0.80, 0.33, 0.30, 0.97],  # non-enhancing tumour core (label 1, LGG)
], dtype=np.float32)
NOISE_SIGMA = 0.035  # Rician noise, fraction of full scale
EXPERTS, NON_EXPERTS = ("R1", "R2"), ("N1", "N2")
NAME_MAPPING_COLUMNS = ("Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
                        "BraTS_2019_subject_ID", "BraTS_2020_subject_ID")
FIXATION_HEADER = ("reader_id", "expertise", "slice_axis", "slice_index", "x", "y", "start_s", "duration_s")


# ------------------------------------------------------------------------------------------------------ phantoms
def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: int = 5) -> np.ndarray:
    """A smooth random field [X, Y, Z] with zero mean and unit std: Gaussian-kernel interpolation of a coarse
    `cells`^3 grid, applied axis by axis (separable, so far cheaper than zooming or blurring a full volume)."""
    field = rng.standard_normal((cells,) * 3)
    for n in shape:
        x = np.linspace(0.0, 1.0, n)[:, None]
        knots = np.linspace(-0.1, 1.1, cells)[None, :]
        weights = np.exp(-0.5 * ((x - knots) * (cells - 1) / 1.2) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        field = np.tensordot(field, weights, axes=([0], [1]))  # consumes the leading axis, appends the new one
    field -= field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _ellipsoid_radius(grid, center, axes) -> np.ndarray:
    """Normalised ellipsoid radius sqrt(sum(((x - c) / a)^2)) on a sparse `grid`; < 1 inside."""
    return np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, axes)))


def _anatomy(rng: np.random.Generator, shape: Sequence[int], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue indices [X, Y, Z] (TISSUES) of a healthy brain, its mask, and the brain's semi-axes in voxels."""
    dims = np.asarray(shape, dtype=np.float64)
    center = dims / 2.0 + rng.uniform(-0.02, 0.02, 3) * dims
    semi = dims * np.array([0.36, 0.42, 0.40]) * rng.uniform(0.94, 1.04, 3)
    radius = _ellipsoid_radius(grid, center, semi) * (1.0 + 0.03 * _smooth_field(rng, shape, 6))
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[radius < 1.0] = TISSUES.index("csf")  # sulcal CSF rim
    tissue[radius < 0.94] = TISSUES.index("grey")
    tissue[radius < 0.80 + 0.04 * _smooth_field(rng, shape, 7)] = TISSUES.index("white")
    for side in (-1.0, 1.0):  # lateral ventricles, one per hemisphere
        v_center = center + np.array([side * 0.12, -0.05, 0.05]) * semi
        ventricle = _ellipsoid_radius(grid, v_center, semi * np.array([0.07, 0.30, 0.18]) * rng.uniform(0.8, 1.2))
        tissue[(ventricle < 1.0) & (radius < 0.8)] = TISSUES.index("csf")
    return tissue, radius < 1.0, semi


def _tumour(rng: np.random.Generator, shape, grid, brain: np.ndarray, semi: np.ndarray, lgg: bool) -> np.ndarray:
    """BraTS labels [X, Y, Z] uint8 of a random tumour inside `brain`: a union of perturbed ellipsoids whose core
    holds a necrotic centre (1) in an enhancing rim (4), or non-enhancing tumour (1) for LGG, in edema (2)."""
    dims = np.asarray(shape, dtype=np.float64)
    direction = rng.standard_normal(3)
    center = dims / 2.0 + direction / np.linalg.norm(direction) * rng.uniform(0.15, 0.45) * semi
    core_radius = rng.uniform(0.17, 0.32) * semi.mean()
    dist = np.full(shape, np.inf, dtype=np.float32)
    for _ in range(rng.integers(1, 4)):
        offset = rng.standard_normal(3) * 0.35 * core_radius
        axes = core_radius * rng.uniform(0.6, 1.1, 3)
        dist = np.minimum(dist, _ellipsoid_radius(grid, center + offset, axes))
    core_dist = dist * (1.0 + 0.15 * _smooth_field(rng, shape, 6))
    edema_dist = dist * (1.0 + 0.2 * _smooth_field(rng, shape, 5)) / rng.uniform(1.35, 1.9)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(edema_dist < 1.0) & brain] = 2
    core = (core_dist < 1.0) & brain
    if lgg:
        seg[core] = 1
    else:
        seg[core] = 4
        necrosis_fraction = 0.0 if rng.random() < 0.15 else rng.uniform(0.5, 0.75)
        seg[(core_dist < necrosis_fraction) & brain] = 1
    return seg


def _images(rng: np.random.Generator, tissue: np.ndarray, seg: np.ndarray, brain: np.ndarray, lgg: bool
            ) -> np.ndarray:
    """int16 images [4, X, Y, Z] (flair, t1, t1ce, t2): tissue contrast, texture, bias field, Rician noise."""
    tissue = tissue.copy()
    tissue[seg == 2] = TISSUES.index("edema")
    tissue[seg == 4] = TISSUES.index("enhancing")
    tissue[seg == 1] = TISSUES.index("non_enhancing" if lgg else "necrosis")
    texture = 1.0 + 0.04 * _smooth_field(rng, tissue.shape, 9)
    out = np.zeros((len(MODALITIES),) + tissue.shape, dtype=np.int16)
    for m in range(len(MODALITIES)):
        clean = CONTRAST[tissue, m] * texture * np.exp(0.08 * _smooth_field(rng, tissue.shape, 4))
        noise = rng.standard_normal((2,) + tissue.shape, dtype=np.float32) * NOISE_SIGMA
        noisy = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
        scaled = np.rint(noisy * rng.uniform(500.0, 1500.0))
        out[m] = np.where(brain, np.clip(scaled, 1, 32767), 0)  # brain voxels stay non-zero: nonzero = brain
    return out


def _phantom(rng: np.random.Generator, shape: Sequence[int]) -> dict:
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    lgg = bool(rng.random() < 0.2)
    tissue, brain, semi = _anatomy(rng, shape, grid)
    seg = _tumour(rng, shape, grid, brain, semi, lgg)
    return {"image": _images(rng, tissue, seg, brain, lgg), "seg": seg, "brain": brain, "lgg": lgg,
            "tumour_fraction": float(np.count_nonzero(seg) / max(np.count_nonzero(brain), 1))}


def phantom_affine(shape: Sequence[int]) -> np.ndarray:
    """The affine of the real release (1 mm, x and y flipped: LPS-like) for a volume of `shape`."""
    return np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, shape[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _save_nifti(path: str, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


# ---------------------------------------------------------------------------------------------------------- gaze
def _sample_voxels(rng: np.random.Generator, pools: list[np.ndarray], probs: Sequence[float], n: int) -> np.ndarray:
    """n flat voxel indices, each drawn from a pool chosen with `probs` (empty pools fall back to the last)."""
    pools = [p if p.size else pools[-1] for p in pools]
    which = rng.choice(len(pools), size=n, p=probs)
    picks = np.empty(n, dtype=np.int64)
    for k, pool in enumerate(pools):
        sel = which == k
        picks[sel] = rng.choice(pool, size=int(sel.sum()))
    return picks


def _fixation_rows(rng: np.random.Generator, seg: np.ndarray, brain: np.ndarray) -> list[tuple]:
    """Rows of FIXATION_HEADER for two experts (tumour core and boundary) and two non-experts (whole brain), all
    on axial slices (array axis 2): x is the array index along axis 0, y along axis 1."""
    whole = seg > 0
    boundary = whole & ~ndimage.binary_erosion(whole)
    core, brain_idx = np.flatnonzero((seg == 1) | (seg == 4)), np.flatnonzero(brain)
    pools = {"expert": ([core, np.flatnonzero(boundary), brain_idx], [0.6, 0.3, 0.1], 1.0),
             "non_expert": ([np.flatnonzero(whole), brain_idx], [0.15, 0.85], 2.5)}
    rows = []
    for reader, expertise in [(r, "expert") for r in EXPERTS] + [(r, "non_expert") for r in NON_EXPERTS]:
        pool, probs, jitter = pools[expertise]
        n = int(rng.integers(30, 151))
        i, j, k = np.unravel_index(_sample_voxels(rng, pool, probs, n), seg.shape)
        x = np.clip(i + rng.normal(0.0, jitter, n), 0, seg.shape[0] - 1)
        y = np.clip(j + rng.normal(0.0, jitter, n), 0, seg.shape[1] - 1)
        duration = rng.uniform(0.1, 0.8, n)
        start = rng.uniform(0.2, 1.0) + np.concatenate([[0.0], np.cumsum(duration + rng.uniform(0.02, 0.3, n))[:-1]])
        rows += [(reader, expertise, 2, int(kk), f"{xx:.1f}", f"{yy:.1f}", f"{s:.3f}", f"{d:.3f}")
                 for kk, xx, yy, s, d in zip(k, x, y, start, duration)]
    return rows


def _write_csv(path: str, header: Sequence[str], rows: list[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------------- tables
def _survival_row(rng: np.random.Generator, case_id: str, tumour_fraction: float, lgg: bool) -> list:
    """(Brats20ID, Age, Survival_days, Extent_of_Resection): survival falls with tumour volume and age."""
    age = rng.uniform(25.0, 85.0)
    z = (tumour_fraction - 0.06) / 0.035  # standardised whole-tumour share of the brain
    log_days = np.log(360.0) - 0.6 * z - 0.01 * (age - 55.0) + (0.4 if lgg else 0.0) + rng.normal(0.0, 0.25)
    days = float(np.exp(log_days))
    u = rng.random()
    text = "" if u < 0.04 else (f"ALIVE ({int(days * rng.uniform(0.4, 1.0))} days later)" if u < 0.1
                                else str(max(int(round(days)), 5)))
    resection = rng.choice(["GTR", "GTR", "GTR", "STR", "NA", ""])
    return [case_id, f"{age:.3f}", text, str(resection)]


def _name_row(index: int, case_id: str, lgg: bool) -> list:
    """Name-mapping row in the real column order; as in the release, some cases are new (NA for older IDs)."""
    old = index % 5 != 0
    ids = [f"Brats17_SYN_{index:03d}_1", f"Brats18_SYN_{index:03d}_1", f"TCGA-SY-{index:04d}",
           f"BraTS19_SYN_{index:03d}_1"] if old else ["NA", "NA", "NA", "NA"]
    return ["LGG" if lgg else "HGG"] + ids + [case_id]


def _write_split(base: str, split: str, n: int, seed: int, shape, gaze_ids: set[int]) -> None:
    """Writes the cases, tables and gaze of one split ("Training" or "Validation") under `base`."""
    affine, training = phantom_affine(shape), split == "Training"
    survival, names = [], []
    if training and gaze_ids:
        os.makedirs(os.path.join(base, "gaze"))
    for index in range(1, n + 1):
        case_id = f"BraTS20_{split}_{index:03d}"
        rng = np.random.default_rng([seed, 0 if training else 1, index])  # a case doesn't depend on `cases`
        case = _phantom(rng, shape)
        case_dir = os.path.join(base, case_id)
        os.makedirs(case_dir)
        for m, modality in enumerate(MODALITIES):
            _save_nifti(os.path.join(case_dir, f"{case_id}_{modality}.nii.gz"), case["image"][m], affine)
        if training:
            _save_nifti(os.path.join(case_dir, f"{case_id}_seg.nii.gz"), case["seg"], affine)
        row = _survival_row(rng, case_id, case["tumour_fraction"], case["lgg"])
        if rng.random() < 0.9:  # the real table lists only some cases
            survival.append(row if training else [case_id, row[1], row[3]])
        names.append(_name_row(index, case_id, case["lgg"]))
        if training and index in gaze_ids:
            _write_csv(os.path.join(base, "gaze", f"{case_id}_fixations.csv"), FIXATION_HEADER,
                       _fixation_rows(rng, case["seg"], case["brain"]))
    if training:
        _write_csv(os.path.join(base, "survival_info.csv"),
                   ("Brats20ID", "Age", "Survival_days", "Extent_of_Resection"), survival)
        _write_csv(os.path.join(base, "name_mapping.csv"), NAME_MAPPING_COLUMNS, names)
    else:
        _write_csv(os.path.join(base, "survival_evaluation.csv"), ("BraTS20ID", "Age", "ResectionStatus"), survival)
        _write_csv(os.path.join(base, "name_mapping_validation_data.csv"), NAME_MAPPING_COLUMNS[1:],
                   [r[1:] for r in names])


# --------------------------------------------------------------------------------------------------- generation
def _marker_state(out: str, params: dict) -> str | None:
    """"same" when `out` holds a finished set made with `params`, "stale" when made by an older version of this
    generator (safe to replace: it is ours), None without a marker; an error when made with other arguments."""
    try:
        with open(os.path.join(out, MARKER)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if found == params:
        return "same"
    if {k: v for k, v in found.items() if k != "version"} == {k: v for k, v in params.items() if k != "version"}:
        return "stale"
    raise ValueError(f"{out}: holds a synthetic BraTS set made with {found}, not {params}; use another --out")


def _install(tmp: str, out: str, params: dict) -> None:
    """Renames the finished `tmp` to `out`, replacing an empty folder or a stale set of ours."""
    old = None
    try:
        if _marker_state(out, params) == "stale":
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
            os.rename(out, os.path.join(old, "set"))
        elif os.path.isdir(out):
            os.rmdir(out)  # an empty folder (checked by the caller)
        os.rename(tmp, out)
    except OSError:
        if _marker_state(out, params) != "same":  # another process finishing first is fine; anything else is not
            raise
    finally:
        if old:
            shutil.rmtree(old, ignore_errors=True)


def generate(out: str | os.PathLike, cases: int, seed: int, shape: Sequence[int] = (96, 96, 64),
             gaze_share: float = 180 / 369, validation: int = 0) -> str:
    """Writes a synthetic BraTS 2020 set into `out` and returns the path of its MICCAI_BraTS2020_TrainingData.

    Layout: `<TrainingData>/BraTS20_Training_XXX/BraTS20_Training_XXX_{flair,t1,t1ce,t2,seg}.nii.gz` (int16 images,
    uint8 seg, shape `shape` at 1 mm), `survival_info.csv`, `name_mapping.csv`, `gaze/<case_id>_fixations.csv` for
    round(gaze_share * cases) cases; `validation` cases without seg under MICCAI_BraTS2020_ValidationData.
    Deterministic for `seed`. Atomic (built in a temporary sibling folder, renamed at the end) and idempotent (a
    finished `out` made with the same arguments is returned as is; one made by an older version of this generator
    is rebuilt).
    """
    out = os.path.abspath(os.fspath(out))
    shape = tuple(int(s) for s in shape)
    if cases < 1 or validation < 0 or len(shape) != 3 or min(shape) < 16 or not 0.0 <= gaze_share <= 1.0:
        raise ValueError(f"need cases >= 1, validation >= 0, a 3D shape >= 16 per axis and gaze_share in [0, 1]; "
                         f"got cases={cases}, validation={validation}, shape={shape}, gaze_share={gaze_share}")
    params = {"version": _VERSION, "cases": int(cases), "seed": int(seed), "shape": list(shape),
              "gaze_share": float(gaze_share), "validation": int(validation)}
    train_dir = os.path.join(out, TRAIN_DIR)
    state = _marker_state(out, params)
    if state == "same":
        return train_dir
    if state is None and os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"{out}: exists and is not a finished synthetic BraTS set; choose a new or empty folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        n_gaze = int(round(gaze_share * cases))
        gaze_ids = set((np.random.default_rng([seed, 2]).permutation(cases)[:n_gaze] + 1).tolist())
        _write_split(os.path.join(tmp, TRAIN_DIR), "Training", cases, seed, shape, gaze_ids)
        if validation:
            _write_split(os.path.join(tmp, VALIDATION_DIR), "Validation", validation, seed, shape, set())
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(params, f)
        _install(tmp, out, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return train_dir


def cli(argv: Sequence[str]) -> int:
    """`python -m gazejax.data.synthetic brats --out DIR --cases N --seed S [--shape X Y Z] [--gaze-share F]
    [--validation M]`; argv[0] is "brats"."""
    parser = argparse.ArgumentParser(prog="python -m gazejax.data.synthetic brats",
                                     description="Write a synthetic BraTS 2020 data set in the real layout.")
    parser.add_argument("--out", required=True, help="output folder (created; must be new, empty or finished)")
    parser.add_argument("--cases", type=int, default=30, help="number of training cases")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64), metavar=("X", "Y", "Z"),
                        help="volume shape (the real release is 240 240 155)")
    parser.add_argument("--gaze-share", type=float, default=180 / 369, help="share of training cases with gaze")
    parser.add_argument("--validation", type=int, default=0, help="number of validation cases (no seg)")
    args = parser.parse_args(list(argv)[1:])
    path = generate(args.out, args.cases, args.seed, tuple(args.shape), args.gaze_share, args.validation)
    print(path)
    return 0
