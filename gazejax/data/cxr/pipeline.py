"""Chest X-ray data for training and evaluation (EGD-CXR, REFLACX): a resized-image cache, patient-level seeded
splits and per-example gaze maps rendered analytically after augmentation.

Records and their image cache come from `gazejax.data.cxr.records` (or the TFDS data set). Fixations stay points
(row, col) in the resized frame; every geometric augmentation moves them, and gaze maps are re-rendered from the
moved points at each requested grid, so a gaze target always matches the image it supervises.

Example (dict of numpy arrays, what a CXR method's batches hold):
  image [H, W, 1] float32 in [0, 1]; gaze_<name> [h, w, 1] float32 per grid; has_gaze bool [];
  label int32 [] ("3class") or float32 [L] multi-hot ("5label"); label_mask bool [] or bool [L];
  fixations [F, 2] float32 (row, col) image pixels, fixation_weights [F] (durations, s), fixation_sigma [F, 2]
  (pixels), fixation_valid [F] bool (padding to a data-set-wide F so examples batch);
  organ_masks [H, W, K] uint8 and has_organ_masks [K] bool (EGD-CXR: left_lung, right_lung, mediastanum,
  aortic_knob).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gazejax.data import gaze as gaze_lib
from gazejax.data import io, splits, transforms2d
from gazejax.data.cxr import records as cxr_records
from gazejax.data.cxr.records import DATASETS, CXRCase
from gazejax.data.errors import DataError

log = logging.getLogger("gazejax")

GAZE_KINDS = {  # kind -> (amplitude, normalize); None = GazeSpec.normalize
    "gaussian": ("mass", None),  # duration-weighted unit-mass Gaussians (DESIGN "Gaze heat maps")
    "ggcam": ("mass", "max"),  # = gaze.ggcam_heatmap(blur_parameter="sigma", weights=durations), Algorithm 1
    "duration": ("peak", "minmax"),  # = gaze.duration_weighted_map, GazAT Sec. 2.2.2
}


# ---- examples ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GazeSpec:
    """Which gaze maps an example holds: grids name -> (h, w); kind (GAZE_KINDS); sigma in SOURCE-image pixels
    (a number, or a numeric string) or "dataset" (each fixation's own sigma, REFLACX); normalize for kind
    "gaussian" ("max" or "sum")."""

    grids: Mapping[str, tuple[int, int]]
    kind: str = "gaussian"
    sigma: float | str = 150.0
    normalize: str | None = "max"

    def __post_init__(self):
        if self.kind not in GAZE_KINDS:
            raise ValueError(f"gaze kind must be one of {sorted(GAZE_KINDS)}, got {self.kind!r}")
        if isinstance(self.sigma, str) and self.sigma != "dataset":  # numeric strings: config overrides
            try:
                object.__setattr__(self, "sigma", float(self.sigma))
            except ValueError:
                raise ValueError(f"gaze sigma must be a number of pixels or 'dataset', got {self.sigma!r}") from None


def _sigma(record: CXRCase, spec: GazeSpec) -> np.ndarray:
    if spec.sigma == "dataset":
        if record.sigma_yx is None:
            raise ValueError(f"{record.dicom_id}: gaze sigma 'dataset' but the data set gives no per-fixation sigma")
        return record.sigma_yx
    return np.broadcast_to(float(spec.sigma) * record.scale_yx, record.points_yx.shape).astype(np.float32)


def base_example(record: CXRCase, spec: GazeSpec, max_fixations: int | None = None) -> dict[str, np.ndarray]:
    """The example without gaze maps, un-augmented (fixations padded to `max_fixations`; None = no padding)."""
    n = len(record.points_yx)
    f = n if max_fixations is None else int(max_fixations)
    if n > f:
        raise ValueError(f"{record.dicom_id}: {n} fixations exceed max_fixations={f}")
    pad = ((0, f - n), (0, 0))
    ex = {"image": np.array(record.image(), np.float32)[..., None],
          "has_gaze": np.asarray(n > 0), "label": np.asarray(record.label), "label_mask": np.asarray(record.label_mask),
          "fixations": np.pad(record.points_yx, pad).astype(np.float32),
          "fixation_weights": np.pad(record.durations, (0, f - n)).astype(np.float32),
          "fixation_sigma": np.pad(_sigma(record, spec), pad, constant_values=1.0).astype(np.float32),
          "fixation_valid": np.arange(f) < n}
    if record.masks_file is not None:
        ex["organ_masks"] = np.asarray(record.masks(), np.uint8)
        ex["has_organ_masks"] = np.asarray(record.has_masks, bool)
    return ex


def render_gaze(example: dict[str, np.ndarray], spec: GazeSpec) -> dict[str, np.ndarray]:
    """Adds `gaze_<name>` [h, w, 1] float32 to `example`, rendered from its valid fixations (zeros without)."""
    valid = example["fixation_valid"]
    amplitude, normalize = GAZE_KINDS[spec.kind]
    frame = example["image"].shape[:2]
    for name, grid in spec.grids.items():
        m = gaze_lib.render_gaussians(
            example["fixations"][valid], example["fixation_weights"][valid], example["fixation_sigma"][valid],
            frame, tuple(int(g) for g in grid), mode="area", amplitude=amplitude,
            normalize=spec.normalize if normalize is None else normalize)
        example[f"gaze_{name}"] = m[..., None]
    return example


def transform_example(example: dict[str, np.ndarray], rng: np.random.Generator,
                      cfg: transforms2d.AugmentConfig) -> dict[str, np.ndarray]:
    """One random transform: image (bilinear + brightness/contrast), organ masks (nearest), fixations and their
    sigma moved by the same affine. Gaze maps are NOT warped: call `render_gaze` afterwards (exact)."""
    ex = dict(example)
    valid = ex["fixation_valid"]
    out = transforms2d.augment(ex["image"], rng, cfg, masks={"organ_masks": ex["organ_masks"]}
                               if "organ_masks" in ex else None,
                               points=ex["fixations"][valid], sigma=ex["fixation_sigma"][valid])
    ex["image"] = out.image
    if "organ_masks" in ex:
        ex["organ_masks"] = out.masks["organ_masks"]
    ex["fixations"], ex["fixation_sigma"] = ex["fixations"].copy(), ex["fixation_sigma"].copy()
    ex["fixations"][valid], ex["fixation_sigma"][valid] = out.points, out.sigma
    return ex


def augment_example(example: dict[str, np.ndarray], rng: np.random.Generator, spec: GazeSpec,
                    cfg: transforms2d.AugmentConfig) -> dict[str, np.ndarray]:
    """`transform_example`, then gaze maps re-rendered from the moved fixations (DataBundle.augment)."""
    return render_gaze(transform_example(example, rng, cfg), spec)


def make_example(record: CXRCase, gaze_grids: Mapping[str, Sequence[int]], gaze_kind: str = "gaussian",
                 sigma_px: float | str = 150.0, augment: bool = False, rng: np.random.Generator | None = None,
                 aug_cfg: transforms2d.AugmentConfig | Mapping | None = None, *, gaze_normalize: str | None = "max",
                 max_fixations: int | None = None) -> dict[str, np.ndarray]:
    """One example (module docstring) of `record`; gaze maps at `gaze_grids` rendered after augmentation.

    sigma_px: Gaussian sigma in source-image pixels (e.g. 150 for EGD-CXR at DICOM resolution) or "dataset".
    """
    spec = GazeSpec({k: tuple(v) for k, v in gaze_grids.items()}, gaze_kind, sigma_px, gaze_normalize)
    if not augment:
        return _example_from_spec(record, spec, max_fixations)
    cfg = aug_cfg if isinstance(aug_cfg, transforms2d.AugmentConfig) else transforms2d.AugmentConfig.from_dict(aug_cfg)
    return augment_example(base_example(record, spec, max_fixations), rng or np.random.default_rng(), spec, cfg)


def example_fn(spec: GazeSpec, max_fixations: int | None) -> Callable[[CXRCase], dict[str, np.ndarray]]:
    """record -> un-augmented example (picklable, for grain `map`)."""
    return functools.partial(_example_from_spec, spec=spec, max_fixations=max_fixations)


def _example_from_spec(record: CXRCase, spec: GazeSpec, max_fixations: int | None) -> dict[str, np.ndarray]:
    return render_gaze(base_example(record, spec, max_fixations), spec)


# ---- splits ------------------------------------------------------------------------------------------------------
def split_records(records: Sequence[CXRCase], scheme: str = "70/10/20", seed: int = 0, test_seed: int = 0,
                  val_fraction: float = 0.1, ratio: float = 1.0) -> dict[str, list[CXRCase]]:
    """train / val / test records: patient-level (no patient in two parts), label-stratified, seeded.

    "70/10/20" (GG-CAM, MT-UNet): shares of the images. "983/100" (CXRGazeLearn): 100 of EGD-CXR's 1083 images
    are the test set and 983 train + validate; a data set with another number of images keeps those proportions
    (test = round(N * 100 / 1083), e.g. 3 of 30), and `val_fraction` of the 983 part validates. Image counts are
    exact unless patients with several images make them impossible. The test part depends on `test_seed` only (it
    never changes with `seed`, `ratio` or training seeds, and never selects models); `seed` draws the validation
    part; `ratio` (SAN+AAB Table 4: 0.2/0.3/0.5/0.7) keeps that share of the training part, stratified.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"data ratio must be in (0, 1], got {ratio}")
    ids = [str(i) for i in range(len(records))]
    groups = [r.patient_id for r in records]
    strata = splits.label_strata(np.stack([np.asarray(r.label) for r in records])) if records else []
    n_test, n_val = splits.scheme_counts(scheme, len(records), val_fraction)
    train, val, test = splits.train_val_test(ids, n_test, n_val, seed=seed, test_seed=test_seed, groups=groups,
                                             strata=strata)
    if ratio < 1:
        sub = lambda values: [values[int(i)] for i in train]  # noqa: E731
        n = max(1, int(np.floor(ratio * len(train) + 0.5)))
        train = splits.take_stratified(train, n, seed=seed + 1_000_003, groups=sub(groups), strata=sub(strata))[1]
    return {name: [records[int(i)] for i in part] for name, part in (("train", train), ("val", val), ("test", test))}


# ---- the data bundle a CXR method's make_data returns ------------------------------------------------------------
@dataclasses.dataclass
class EvalSplit:
    """An evaluation split: its records and a grain.MapDataset of their un-augmented examples (same order)."""

    records: list[CXRCase]
    examples: Any

    def __len__(self) -> int:
        return len(self.records)


def _get(node, key: str, default):
    value = node.get(key, default) if hasattr(node, "get") else default
    return default if value is None else value


def resolve_roots(config) -> tuple[str, str]:
    """(root, mimic_root) of the configured data set, or of the built-in synthetic set generated once into
    `data.synthetic.dir` (default ~/.cache/gazejax) when `data.root` is empty. `data.synthetic.style` "basic"
    (default) or "realistic", with `difficulty` (default 0.5) and `label_noise` (default None: the difficulty's);
    the folder name gains them only for a non-basic style, so basic sets keep their names."""
    d = config.data
    if d.root:
        for name, path in (("data.root", d.root), ("data.mimic_root", d.mimic_root)):
            if not path or not os.path.isdir(path):
                raise FileNotFoundError(f"{name} {path!r}: no such directory")
        return d.root, d.mimic_root
    from gazejax.data.synthetic import cxr as synth

    s = _get(d, "synthetic", {})
    images, seed, size = int(_get(s, "images", 60)), int(_get(s, "seed", 0)), tuple(_get(s, "size", (512, 416)))
    style = {"style": str(_get(s, "style", "basic")), "difficulty": float(_get(s, "difficulty", 0.5)),
             "label_noise": _get(s, "label_noise", None)}
    name = f"synthetic_{d.dataset}_n{images}_s{seed}_{size[0]}x{size[1]}"
    if style["style"] != "basic":
        noise = style["label_noise"]
        name += f"_{style['style']}_d{style['difficulty']:g}" + ("" if noise is None else f"_ln{float(noise):g}")
    out = os.path.join(os.path.expanduser(_get(s, "dir", "") or "~/.cache/gazejax"), name)
    make = {"egd_cxr": synth.generate_egd_cxr, "reflacx": synth.generate_reflacx}.get(d.dataset)
    if make is None:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {d.dataset!r}")
    try:
        return make(out, images=images, seed=seed, size=size, **style)
    except ValueError as e:
        raise ValueError(f"data.synthetic: {e}") from None


def _augment_config(value) -> transforms2d.AugmentConfig | None:
    """data.augment: None/False/{"enabled": False} -> no augmentation; a dict of AugmentConfig fields -> those."""
    if value is None or value is False:
        return None
    values = dict(value.to_dict() if hasattr(value, "to_dict") else value)
    return transforms2d.AugmentConfig.from_dict(values) if values.pop("enabled", True) else None


EGD_CXR_DICOM_HEIGHT = 3056  # EGD-CXR's DICOM height ("2544 x 3056"): the frame papers give gaze blurs in


def source_pixels(config, sigma_dicom: float) -> float:
    """A gaze blur given in EGD-CXR DICOM pixels, in source pixels of the data used: unchanged for real data,
    scaled by synthetic height / 3056 for the synthetic set (the blob covers the same share of the image)."""
    if config.data.root:
        return float(sigma_dicom)
    return float(sigma_dicom) * float(config.data.synthetic.size[0]) / EGD_CXR_DICOM_HEIGHT


def _reader_options(d) -> dict[str, Any]:
    reader = _get(d, "reader", {})
    return dict(reader.to_dict() if hasattr(reader, "to_dict") else reader)


def load_cases(config, with_raw: bool = False) -> tuple[list[CXRCase], dict[str, Any], dict | None]:
    """The configured data set's cached cases (`records.prepare_records`, or the TFDS data set built from `root` on
    first use when data.source="tfds"), "3class" images without exactly one positive class left out (with a
    warning). Returns (cases, where {"root", "mimic_root", "cache"}, raw) where raw maps dicom_id -> the reader's
    CXRRecord (each fixation's reader, findings) when `with_raw`, else None."""
    d = config.data
    root, mimic_root = resolve_roots(config)
    cache = io.cache_dir(d.cache_dir, "cxr", root)
    options, size = _reader_options(d), tuple(d.image_size)
    load, store = cxr_records.prepare_records, cache
    raw = None
    if _get(d, "source", "files") == "tfds":  # the TFDS data set (built from root on first use) replaces the cache
        from gazejax.data.tfds import cxr as tfds_cxr

        load, store = tfds_cxr.prepare_records, _get(d, "tfds_dir", "") or os.path.join(cache, "tfds")
        if with_raw:
            raw = tfds_cxr.raw_records(d.dataset, root, mimic_root, store, size, reader_options=options)
    elif with_raw:
        raw = {r.dicom_id: r for r in cxr_records.reader_for(d.dataset, root, mimic_root, options).records()}
    cases = load(d.dataset, root, mimic_root, store, size, label_set=d.label_set,
                 label_policy=d.label_policy or None, reader_options=options)
    if d.label_set == "3class":
        dropped = [c.dicom_id for c in cases if not c.label_mask]
        cases = [c for c in cases if c.label_mask]
        if dropped:
            log.warning("CXR data: %d images without exactly one of Normal/CHF/pneumonia left out", len(dropped))
    return cases, {"root": root, "mimic_root": mimic_root, "cache": cache}, raw


def gaze_files(config, root: str) -> str:
    """Where the configured data set's reader looks for gaze (for error messages)."""
    d = config.data
    if d.dataset == "reflacx":
        return os.path.join(root, "main_data", "<reading id>", "fixations.csv")
    source = str(_reader_options(d).get("source", "fixations"))
    return os.path.join(root, "eye_gaze.csv" if source == "eye_gaze" else "fixations.csv")


def check_train_gaze(config, train: Sequence[CXRCase], root: str, method: str) -> None:
    """A method that trains on gaze stops, naming where it searched, when no training image has any (a misspelled
    or empty data set folder would otherwise train a gaze method without gaze)."""
    if not any(c.has_gaze for c in train):
        raise DataError(f"{gaze_files(config, root)}: method {method!r} trains on gaze, but none of the "
                        f"{len(train)} training images has any fixation there (data.root {root!r})")


def parts_with_gaze_sigma(config, sigma, process_index: int = 0, process_count: int = 1,
                          needs_gaze: bool = False) -> dict[str, Any]:
    """`bundle_parts` of a copy of `config` whose data.gaze_sigma is `sigma` (the caller's resolved value)."""
    import copy

    resolved = copy.deepcopy(config)
    with resolved.unlocked():
        resolved.data.gaze_sigma = sigma
    return bundle_parts(resolved, process_index, process_count, needs_gaze=needs_gaze)


def bundle_parts(config, process_index: int = 0, process_count: int = 1, needs_gaze: bool = False) -> dict[str, Any]:
    """The fields of a CXR method's `DataBundle` (train, num_train, splits, augment, info) from `config.data`
    (dataset, root, mimic_root, cache_dir, image_size, label_set, label_policy, split, ratio, seed, gaze_grids,
    gaze_kind, gaze_sigma, augment; optional test_seed, val_fraction, gaze_normalize, reader, synthetic, source).
    `train` holds un-augmented examples in fixed order; `augment` moves image, masks and fixations and re-renders
    the gaze maps; splits "val" and "test" are `EvalSplit`s. `needs_gaze`: the method trains on gaze
    (`check_train_gaze`)."""
    import grain

    d = config.data
    cases, where, _ = load_cases(config)
    parts = split_records(cases, d.split, seed=int(d.seed), test_seed=int(_get(d, "test_seed", 0)),
                          val_fraction=float(_get(d, "val_fraction", 0.1)), ratio=float(d.ratio))
    if needs_gaze:
        check_train_gaze(config, parts["train"], where["root"], str(config.get("method", "")))
    grids = {str(k): tuple(int(g) for g in v) for k, v in dict(d.gaze_grids).items()}
    spec = GazeSpec(grids, d.gaze_kind, d.gaze_sigma, _get(d, "gaze_normalize", "max"))
    max_fix = max([len(r.points_yx) for r in cases] + [1])
    to_example = example_fn(spec, max_fix)
    aug = _augment_config(d.augment)
    augment = None if aug is None else functools.partial(augment_example, spec=spec, cfg=aug)
    evals = {k: EvalSplit(parts[k], grain.MapDataset.source(parts[k]).map(to_example)) for k in ("val", "test")}
    info = {**where, "synthetic": not d.root, "max_fixations": max_fix, "process": (process_index, process_count),
            **{f"{k}_ids": [r.dicom_id for r in v] for k, v in parts.items()},
            "with_gaze": {k: sum(r.has_gaze for r in v) for k, v in parts.items()}}
    log.info("CXR data (%s): %s", d.dataset, {k: len(v) for k, v in parts.items()})
    return {"train": grain.MapDataset.source(parts["train"]).map(to_example), "num_train": len(parts["train"]),
            "splits": evals, "augment": augment, "info": info}
