"""GazAT's gaze attention maps (Sec. 2.2.2) and its two views (Sec. 2.3.2), vectorised numpy/scipy for the Grain
pipeline (`DataBundle.augment`: `fn(example, rng) -> example`).

Attention map A (Sec. 2.2.2): per reader, A_g(x) = sum_i d_i exp(-|x - x_i|^2 / (2 sigma^2)) (peak-1 Gaussians
weighted by fixation duration d_i, `gaze.render_gaussians(amplitude="peak")`), min-max normalised to [0, 1]; with
several readers (REFLACX) the per-reader maps are averaged (or weighted by reader, "experience") and min-max
normalised again (`gaze.aggregate_readers`). Maps are rendered analytically at any grid from the (augmented)
fixation points, so a map always matches the image it belongs to.

Views: I_a = a standard augmentation (random resized crop 0.8-1.0, rotation +-10 degrees, brightness/contrast
+-0.2: `transforms2d.AugmentConfig`'s defaults). I_g = A * I + (1 - A) * T_strong(I) (T_g of Sec. 2.3.2), with I a
second, independent standard view (the paper's I, moved like I_a so both views are random; `gaze_view_geometric=False`
uses the un-augmented image) and T_strong a configurable strong augmentation (intensity jitter, blur, noise,
cut-out). Without gaze (mode "standard": SimCLR, BYOL, MoCo, McGIP) I_g is a second standard view, or with
`baseline_strong` T_strong of one (the augmentation strength GazAT's I_g gets), and no gaze reaches the views.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from gazejax.data import gaze as gaze_lib
from gazejax.data import transforms2d
from gazejax.data.cxr.pipeline import transform_example

MODES = ("gaze", "standard")
MAP_KINDS = ("duration", "count")
AGGREGATIONS = ("mean", "weighted", "pooled")
_GEOMETRY_KEYS = ("image", "fixations", "fixation_weights", "fixation_sigma", "fixation_valid", "fixation_reader",
                  "reader_weights")


def _from_dict(cls, values: Mapping[str, Any] | None, where: str):
    values = dict(values.to_dict() if hasattr(values, "to_dict") else (values or {}))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"data/views.py: unknown {where} options {unknown}; known: {sorted(names)}")
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class StrongAugment:
    """T_strong: applied in this order, each with its probability. Intensity jitter: brightness and contrast factors
    in [1 - jitter, 1 + jitter] and a gamma in [1 / (1 + jitter), 1 + jitter]; Gaussian blur with sigma (pixels)
    drawn from `blur_sigma`; additive Gaussian noise of std `noise_std`; `cutout_count` rectangles whose sides are
    `cutout_size` shares of the image sides, filled with the image mean. Output clipped to [0, 1]."""

    jitter: float = 0.4
    jitter_prob: float = 0.8
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    blur_prob: float = 0.5
    noise_std: float = 0.05
    noise_prob: float = 0.5
    cutout_count: int = 1
    cutout_size: tuple[float, float] = (0.1, 0.3)
    cutout_prob: float = 0.5

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "StrongAugment":
        return _from_dict(cls, values, "strong augmentation")


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """How gaze becomes A: kind "duration" (Sec. 2.2.2) or "count" (every fixation weight 1); aggregate "mean" /
    "weighted" (per-reader maps averaged, weighted by the example's `reader_weights`) or "pooled" (one map of all
    readers' fixations); `max_readers` > 0 keeps the first k readers of each image; `random=True` replaces the
    fixations by as many uniformly placed ones (same durations and sigma, seeded by the image's fixations, so
    fixed per image): the random-maps ablation."""

    kind: str = "duration"
    aggregate: str = "mean"
    max_readers: int = 0
    random: bool = False

    def __post_init__(self):
        if self.kind not in MAP_KINDS or self.aggregate not in AGGREGATIONS:
            raise ValueError(f"data/views.py: attention kind must be one of {MAP_KINDS} and aggregate one of "
                             f"{AGGREGATIONS}, got {self.kind!r}, {self.aggregate!r}")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Everything `make_views` needs. grids: attention-target name (a backbone layer) -> (h, w); signature_grid:
    McGIP's un-augmented gaze map grid (None = not produced); baseline_strong: in mode "standard", the second view
    is T_strong of a standard view instead of a plain standard view."""

    mode: str = "gaze"
    standard: transforms2d.AugmentConfig = transforms2d.AugmentConfig()
    strong: StrongAugment = StrongAugment()
    attention: AttentionSpec = AttentionSpec()
    grids: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    gaze_view_geometric: bool = True
    baseline_strong: bool = False
    signature_grid: tuple[int, int] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"data/views.py: view mode must be one of {MODES}, got {self.mode!r}")


# ---- attention maps ----------------------------------------------------------------------------------------------
def randomize_fixations(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example with its valid fixations moved to uniform random image positions (durations, sigma and readers
    kept), drawn from a generator seeded by the fixations themselves: the same random map every epoch."""
    ex = dict(example)
    valid = np.asarray(ex["fixation_valid"], bool)
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(ex["fixations"][valid]).tobytes()))
    h, w = ex["image"].shape[:2]
    points = ex["fixations"].copy()
    points[valid] = rng.uniform([-0.5, -0.5], [h - 0.5, w - 0.5], size=(int(valid.sum()), 2))
    ex["fixations"] = points.astype(np.float32)
    return ex


def attention_map(example: Mapping[str, np.ndarray], grid: tuple[int, int], spec: AttentionSpec) -> np.ndarray:
    """A `[h, w]` float32 in [0, 1] on `grid` (covering the image extent) from the example's valid fixations; zeros
    without gaze. Readers come from `fixation_reader` (absent: one reader)."""
    valid = np.asarray(example["fixation_valid"], bool)
    readers = np.asarray(example.get("fixation_reader", np.zeros(valid.shape, np.int32)))
    if spec.max_readers > 0:
        valid = valid & (readers < spec.max_readers)
    grid = tuple(int(g) for g in grid)
    if not valid.any():
        return np.zeros(grid, np.float32)
    frame = example["image"].shape[:2]
    weights = example["fixation_weights"] if spec.kind == "duration" else np.ones(valid.shape, np.float32)

    def render(sel: np.ndarray) -> np.ndarray:
        return gaze_lib.render_gaussians(example["fixations"][sel], weights[sel], example["fixation_sigma"][sel],
                                         frame, grid, mode="area", normalize="minmax", amplitude="peak")

    ids = np.unique(readers[valid])
    if spec.aggregate == "pooled" or len(ids) == 1:
        return render(valid)
    maps = [render(valid & (readers == r)) for r in ids]
    if spec.aggregate == "mean":
        return gaze_lib.aggregate_readers(maps, how="mean", normalize="minmax")
    rw = np.asarray(example.get("reader_weights", np.ones(int(ids.max()) + 1, np.float32)))
    return gaze_lib.aggregate_readers(maps, rw[ids], how="weighted", normalize="minmax")


# ---- strong augmentation and the gaze-guided view ----------------------------------------------------------------
def strong_augment(image: np.ndarray, rng: np.random.Generator, cfg: StrongAugment) -> np.ndarray:
    """T_strong(image) for `image [H, W, C]` in [0, 1] (see `StrongAugment`); float32."""
    out = np.asarray(image, np.float32)
    h, w = out.shape[:2]
    if cfg.jitter > 0 and rng.random() < cfg.jitter_prob:
        gamma = math.exp(rng.uniform(-1, 1) * math.log1p(cfg.jitter))
        out = np.clip(out, 0.0, 1.0) ** gamma
        params = transforms2d.IntensityParams(*rng.uniform(1 - cfg.jitter, 1 + cfg.jitter, size=2))
        out = transforms2d.adjust_intensity(out, params)
    if cfg.blur_sigma[1] > 0 and rng.random() < cfg.blur_prob:
        s = rng.uniform(*cfg.blur_sigma)
        out = ndimage.gaussian_filter(out, (s, s) + (0,) * (out.ndim - 2), mode="reflect")
    if cfg.noise_std > 0 and rng.random() < cfg.noise_prob:
        out = out + rng.normal(0.0, cfg.noise_std, out.shape).astype(np.float32)
    if cfg.cutout_count > 0 and rng.random() < cfg.cutout_prob:
        fill = float(out.mean())
        for _ in range(cfg.cutout_count):  # a handful of rectangles, each one slice assignment
            ch, cw = (max(1, int(round(rng.uniform(*cfg.cutout_size) * n))) for n in (h, w))
            r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out[r0:r0 + ch, c0:c0 + cw] = fill
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def gaze_guided(image: np.ndarray, attention: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """T_g(I, A) = A * I + (1 - A) * T_strong(I) (Sec. 2.3.2): image, strong `[H, W, C]`, attention `[H, W]`."""
    a = np.asarray(attention, np.float32)[..., None]
    return (a * np.asarray(image, np.float32) + (1.0 - a) * np.asarray(strong, np.float32)).astype(np.float32)


# ---- the DataBundle augment functions ----------------------------------------------------------------------------
def make_views(example: Mapping[str, np.ndarray], rng: np.random.Generator, cfg: ViewConfig) -> dict[str, np.ndarray]:
    """One pretraining example: "view_a", "view_g" `[H, W, 1]`; in mode "gaze" also "attn_a_<name>",
    "attn_g_<name>" `[h, w]` (A of each view at every `cfg.grids` grid); "gaze_sig" `[h, w]` (un-augmented A at
    `cfg.signature_grid`, McGIP) when asked; "has_gaze", "label", "label_mask" and "index" (when present) passed
    through."""
    base = {k: example[k] for k in _GEOMETRY_KEYS if k in example}
    if cfg.attention.random and cfg.mode == "gaze":
        base = randomize_fixations(base)
    out = {k: np.asarray(example[k]) for k in ("has_gaze", "label", "label_mask", "index") if k in example}
    view_a = transform_example(base, rng, cfg.standard)
    second = cfg.mode == "standard" or cfg.gaze_view_geometric
    view_g = transform_example(base, rng, cfg.standard) if second else base
    out["view_a"] = view_a["image"]
    if cfg.mode == "standard":
        out["view_g"] = strong_augment(view_g["image"], rng, cfg.strong) if cfg.baseline_strong else view_g["image"]
    else:
        a_full = attention_map(view_g, view_g["image"].shape[:2], cfg.attention)
        out["view_g"] = gaze_guided(view_g["image"], a_full, strong_augment(view_g["image"], rng, cfg.strong))
        for name, grid in cfg.grids.items():
            out[f"attn_a_{name}"] = attention_map(view_a, grid, cfg.attention)
            out[f"attn_g_{name}"] = attention_map(view_g, grid, cfg.attention)
    if cfg.signature_grid is not None:
        out["gaze_sig"] = attention_map(base, cfg.signature_grid, cfg.attention)
    return out


def finetune_view(example: Mapping[str, np.ndarray], rng: np.random.Generator,
                  cfg: transforms2d.AugmentConfig) -> dict[str, np.ndarray]:
    """One fine-tuning example: the standard augmentation of the image only (no gaze): "image", "label",
    "label_mask"."""
    aug = transforms2d.augment(example["image"], rng, cfg)
    return {"image": aug.image.astype(np.float32), "label": np.asarray(example["label"]),
            "label_mask": np.asarray(example["label_mask"])}
