"""GazAT's data: CXR records (REFLACX or EGD-CXR; the synthetic set by default) as examples that also carry each
fixation's reader and the image's finding locations, the label subsets of the few-shot fine-tunings, and evaluation
splits that carry the linear probe's training and validation examples.

Example = `cxr_pipeline.base_example` (image [H, W, 1], label, label_mask, has_gaze, fixations [F, 2] (row, col)
resized pixels, fixation_weights [F] s, fixation_sigma [F, 2], fixation_valid [F], EGD-CXR organ masks) plus
fixation_reader [F] int32 (index of the fixation's reader in the image's reader list, -1 in padding),
reader_weights [R] float32 (`data.reader_weights` by reader id, default 1; 0 in padding), findings [K, 4] float32
(row0, col0, row1, col1) in resized pixels (REFLACX anomaly ellipses' bounding boxes with certainty >= 3) and
finding_valid [K] bool; pretraining examples also carry index [] int32, the image's position in the training part
(MoCo stores it with its queued keys).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from gazejax.data.cxr import pipeline as cxr_pipeline
from gazejax.data import splits
from gazejax.data.cxr.labels import CXRRecord
from gazejax.data.cxr.records import CXRCase
from gazejax.data.geometry import ResizeTransform
from gazejax.data import transforms2d, views
from gazejax.engine.api import DataBundle
from gazejax.methods.gazat import cases as gazat_cases
from gazejax.methods.gazat import losses as losses_ssl
from gazejax.methods.gazat import spec as gazat

log = logging.getLogger("gazejax")
MCGIP_RATE_WARNING = 0.25  # a larger share of positive pairs leaves McGIP few negatives


@dataclasses.dataclass
class Item:
    """A cached case with its per-fixation readers [N] int32, reader weights [R] and findings [K, 4]."""

    case: CXRCase
    readers: np.ndarray
    reader_weights: np.ndarray
    findings: np.ndarray

    @property
    def dicom_id(self) -> str:
        return self.case.dicom_id


@dataclasses.dataclass
class GazATSplit:
    """An evaluation split: its items and examples, plus the probe's training and validation examples."""

    name: str
    items: list[Item]
    examples: Any
    probe_train: Any
    probe_val: Any
    cache: dict = dataclasses.field(default_factory=dict)  # per-split values the evaluation computes once

    def __len__(self) -> int:
        return len(self.items)


def finding_boxes(record: CXRRecord, case: CXRCase, pad: str = "symmetric") -> np.ndarray:
    """REFLACX anomaly ellipses ("ellipse/<label>" boxes, (xmin, ymin, xmax, ymax) source pixels) -> [K, 4]
    (row0, col0, row1, col1) in the resized image; [0, 4] when there are none (EGD-CXR)."""
    boxes = [np.asarray(v, np.float32).reshape(-1, 4) for k, v in record.boxes.items() if k.startswith("ellipse/")]
    if not boxes:
        return np.zeros((0, 4), np.float32)
    xyxy = np.unique(np.concatenate(boxes), axis=0)  # readers and labels share ellipses
    scale, offset = ResizeTransform.fit(case.source_shape, case.image_shape, pad=pad).as_affine("yx")
    lo = xyxy[:, [1, 0]] * scale + offset
    hi = xyxy[:, [3, 2]] * scale + offset
    return np.concatenate([lo, hi], axis=1).astype(np.float32)


def make_item(case: CXRCase, record: CXRRecord, weights: dict[str, float]) -> Item:
    readers = np.asarray(record.fixations.readers).astype(str)
    if len(readers) != len(case.points_yx):
        raise ValueError(f"{case.dicom_id}: {len(readers)} reader ids for {len(case.points_yx)} fixations")
    names, index = np.unique(readers, return_inverse=True) if len(readers) else (np.zeros(0, str), readers)
    return Item(case, np.asarray(index, np.int32), np.array([float(weights.get(n, 1.0)) for n in names], np.float32),
                finding_boxes(record, case))


def example(item: Item, spec: cxr_pipeline.GazeSpec, sizes: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The example of `item` (module docstring), padded to `sizes` = (fixations, readers, findings)."""
    max_fix, max_readers, max_findings = sizes
    ex = cxr_pipeline.base_example(item.case, spec, max_fix)
    n, r, k = len(item.readers), len(item.reader_weights), len(item.findings)
    ex["fixation_reader"] = np.pad(item.readers, (0, max_fix - n), constant_values=-1).astype(np.int32)
    ex["reader_weights"] = np.pad(item.reader_weights, (0, max_readers - r)).astype(np.float32)
    ex["findings"] = np.pad(item.findings, ((0, max_findings - k), (0, 0))).astype(np.float32)
    ex["finding_valid"] = np.arange(max_findings) < k
    return ex


def label_subset(items: Sequence[Item], fraction: float, seed: int, min_size: int) -> list[Item]:
    """round(fraction * N) items (at least 1), patient-grouped and label-stratified (`splits.take_stratified`), then
    repeated until there are at least `min_size` (a training batch) so the stage can fill its batches."""
    ids = [str(i) for i in range(len(items))]
    n = min(len(items), max(1, int(math.floor(fraction * len(items) + 0.5))))
    strata = splits.label_strata(np.stack([np.asarray(it.case.label) for it in items]))
    groups = [it.case.patient_id for it in items]
    _, taken = splits.take_stratified(ids, n, seed=seed, groups=groups, strata=strata)
    if not taken:  # every patient holds more than n images: the smallest patient, a seeded pick among equals
        sizes = {g: groups.count(g) for g in groups}
        smallest = min(sizes.values())
        patient = str(np.random.default_rng(seed).choice(sorted(g for g, k in sizes.items() if k == smallest)))
        taken = [i for i, g in zip(ids, groups) if g == patient]
        log.warning("label subset %.3g: every patient holds more than the %d image(s) asked for (%d training "
                    "images); took patient %s's %d", fraction, n, len(items), patient, len(taken))
    subset = [items[int(i)] for i in taken]
    return subset * max(1, math.ceil(min_size / len(subset)))


def positive_rate(signatures: np.ndarray, has_gaze: np.ndarray, similarity: str, threshold: float) -> dict:
    """McGIP's positives among image pairs: {"pairs": pairs i < j both with gaze, "positive_rate": the share of
    them whose `losses.gaze_similarity` exceeds `threshold`}."""
    has = np.asarray(has_gaze, bool)
    sim = np.asarray(losses_ssl.gaze_similarity(np.asarray(signatures, np.float32), similarity))
    pairs = has[:, None] & has[None, :] & ~np.eye(len(has), dtype=bool)
    rate = float(np.mean(sim[pairs] > threshold)) if pairs.any() else float("nan")
    return {"pairs": int(pairs.sum() // 2), "positive_rate": rate}


def mcgip_positive_rate(items: Sequence[Item], spec: cxr_pipeline.GazeSpec, sizes: tuple[int, int, int],
                        config) -> dict[str, Any]:
    """`positive_rate` of the training images' un-augmented gaze maps at `mcgip.grid`, with the settings and the
    extra positives an anchor with gaze meets in a batch."""
    cfg = gazat.view_config(config)
    exs = [example(it, spec, sizes) for it in items]
    sig = np.stack([views.attention_map(ex, cfg.signature_grid, cfg.attention) for ex in exs])
    has = np.array([bool(ex["has_gaze"]) for ex in exs])
    out = positive_rate(sig, has, config.mcgip.similarity, float(config.mcgip.threshold))
    return {"similarity": str(config.mcgip.similarity), "grid": tuple(int(g) for g in cfg.signature_grid),
            "threshold": float(config.mcgip.threshold), **out,
            "extra_positives_per_gaze_anchor": out["positive_rate"] * (int(config.batch_size) - 1) * float(has.mean())}


def report_positive_rate(m: dict, batch_size: int) -> None:
    """Logs McGIP's positive rate; warns (with counts) when it leaves few negatives."""
    log.info("McGIP positives: %s", m)
    if m["positive_rate"] > MCGIP_RATE_WARNING:
        log.warning("McGIP: mcgip.threshold %g marks %.1f %% of the %d training image pairs positive (~%.1f extra "
                    "positives per anchor in a batch of %d); raise it", m["threshold"], 100 * m["positive_rate"],
                    m["pairs"], m["extra_positives_per_gaze_anchor"], batch_size)


def _check_queue(config, num_train: int) -> None:
    """A queue longer than `moco.queue_share` of the training images holds stale copies of them: warn with counts."""
    if gazat.spec(config)[1] != "moco":
        return
    size = gazat_cases.queue_size(config, num_train)
    if size > float(config.moco.queue_share) * num_train + int(config.batch_size):
        log.warning("moco.queue_size %d holds %.1f epochs of the %d training images (each anchor meets ~%.0f older "
                    "keys of its own image, masked, and of every other image); 0 = %d from the data", size,
                    size / max(num_train, 1), num_train, size / max(num_train, 1),
                    gazat_cases.auto_queue_size(num_train, int(config.batch_size), float(config.moco.queue_share)))


def make_bundle(config, pretrain_augment: Callable, finetune_augment: Callable, process_index: int = 0,
                process_count: int = 1) -> DataBundle:
    """The DataBundle: "train" (all training images with their index, `pretrain_augment`), "label_<subset>"
    label subsets (`spec.label_subsets`, `finetune_augment`), and "val" / "test" GazATSplits."""
    import grain

    d = config.data
    parts, where, raw = gazat_cases.split_cases(config)
    views_kind, objective, _, random_maps = gazat.spec(config)
    if (views_kind == "gaze" and not random_maps) or objective == "mcgip":
        cxr_pipeline.check_train_gaze(config, parts["train"], where["root"], str(config.method))
    weights = {str(k): float(v) for k, v in dict(d.reader_weights).items()}
    items = {k: [make_item(c, raw[c.dicom_id], weights) for c in v] for k, v in parts.items()}
    every = [it for v in items.values() for it in v]
    sizes = (max([len(it.readers) for it in every] + [1]), max([len(it.reader_weights) for it in every] + [1]),
             max([len(it.findings) for it in every] + [1]))
    spec = cxr_pipeline.GazeSpec({}, "duration", d.gaze_sigma)
    to_example = functools.partial(example, spec=spec, sizes=sizes)
    source = lambda its: grain.MapDataset.source(its).map(to_example)  # noqa: E731
    train = grain.MapDataset.source(items["train"]).map_with_index(
        lambda i, it: {**to_example(it), "index": np.int32(i)})
    val = source(items["val"])
    subsets = {f"label_{name}": label_subset(items["train"], fraction, int(d.seed) + draw, int(config.batch_size))
               for name, fraction, draw in gazat.label_subsets(config)}
    train_sets = {k: source(v) for k, v in subsets.items()}
    evals = {k: GazATSplit(k, items[k], source(items[k]), source(items["train"]), val) for k in ("val", "test")}
    info = {**where, "synthetic": not d.root, "process": (process_index, process_count),
            **{f"{k}_ids": [it.dicom_id for it in v] for k, v in items.items()},
            "label_subsets": {k: len({id(it) for it in v}) for k, v in subsets.items()},
            "readers_per_image": {k: [int(len(it.reader_weights)) for it in v] for k, v in items.items()}}
    if gazat.spec(config)[1] == "mcgip":
        info["mcgip"] = mcgip_positive_rate(items["train"], spec, sizes, config)
        report_positive_rate(info["mcgip"], int(config.batch_size))
    _check_queue(config, len(items["train"]))
    log.info("GazAT data (%s): %s", d.dataset, {k: len(v) for k, v in items.items()})
    return DataBundle(train=train, num_train=len(items["train"]), splits=evals, augment=pretrain_augment, info=info,
                      train_sets=train_sets, augments={k: finetune_augment for k in train_sets})


def make_data(config, process_index: int = 0, process_count: int = 1) -> DataBundle:
    """The method's DataBundle: pretraining views (gaze-guided or standard, `spec.view_config`) on every training
    image, standard fine-tuning views on the label subsets."""
    finetune = functools.partial(views.finetune_view,
                                 cfg=transforms2d.AugmentConfig.from_dict(config.views.standard))
    pretrain = (finetune if gazat.spec(config)[0] is None
                else functools.partial(views.make_views, cfg=gazat.view_config(config)))
    return make_bundle(config, pretrain, finetune, process_index, process_count)
