"""TFDS builders `egd_cxr` and `reflacx`: chest radiographs resized for training, with fixations, labels and organ
masks, as array_record; and `prepare_records`, the CXR pipeline's records read from them (`data.source="tfds"`).

One builder config per target image size, padding and reader options (e.g. "512x416_symmetric"): an example holds
what `gazejax.data.cxr.pipeline.prepare_records` caches for an image (float32 [H, W] in [0, 1] padded to the aspect
and area-resampled, organ masks bool [H, W, K]) and its record's fields: fixations in the resized frame (row, col),
durations, per-fixation sigma, the source shape and every raw label value, so any label set / policy can be chosen
when training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from gazejax.data.cxr import egd_cxr, reflacx
from gazejax.data.cxr import labels as cxr_labels
from gazejax.data.cxr import records as cxr_records
from gazejax.data.tfds import common

tfds = common.import_tfds()

_ZLIB = tfds.features.Encoding.ZLIB
_INSTRUCTIONS = """\
{title} is credentialed PhysioNet data ({url}); its images are MIMIC-CXR DICOMs
(https://physionet.org/content/mimic-cxr/2.0.0/). Put into the manual folder (`--manual_dir`):
  {folder}the data set as released ({layout})
  mimic-cxr/     the MIMIC-CXR root holding files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.dcm (only the images the data
                 set uses are read; symbolic links are fine)
"""


@dataclasses.dataclass(eq=False)
class CXRConfig(tfds.core.BuilderConfig):
    """Target image size (H, W), padding ("symmetric" or "end") and reader options as sorted (key, value) pairs."""

    image_size: tuple[int, int] = (512, 416)
    pad: str = "symmetric"
    reader_options: tuple = ()


def make_config(image_size: Sequence[int], pad: str = "symmetric",
                reader_options: Mapping[str, Any] | None = None) -> CXRConfig:
    """The config for these settings, named "<H>x<W>_<pad>" (+ "_<hash>" of non-empty reader options)."""
    size = tuple(int(s) for s in image_size)
    options = tuple(sorted((str(k), common.to_json(v)) for k, v in dict(reader_options or {}).items()))
    name = f"{size[0]}x{size[1]}_{pad}"
    if options:
        name += "_" + hashlib.sha1(json.dumps(options).encode()).hexdigest()[:8]
    return CXRConfig(name=name, version=_CXRBuilder.VERSION, image_size=size, pad=pad, reader_options=options,
                     description=f"{size[0]}x{size[1]} pixels, {pad} padding, reader options {dict(options)}")


def _find_roots(manual_dir: str, folder: str) -> tuple[str, str]:
    root, mimic = os.path.join(manual_dir, folder), os.path.join(manual_dir, "mimic-cxr")
    for path in (root, mimic):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: missing; the manual folder must hold {folder}/ and mimic-cxr/")
    return root, mimic


class _CXRBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by EGD-CXR and REFLACX; `roots=(root, mimic_root)` replaces the manual folder."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Resized images, organ masks, fixations in the resized frame, raw labels.",
                     "1.1.0": "Each fixation's reader id and the reader's boxes (source pixels) in the records."}
    DATASET = ""  # gazejax.data.cxr.pipeline data set name
    FOLDER = ""  # folder of the data set inside the manual folder
    READER: type = type(None)  # the data set's reader class (gazejax.data.cxr.egd_cxr.EGDCXR, reflacx.REFLACX)

    def __init__(self, *, roots: tuple[str, str] | None = None, **kwargs: Any):
        self._roots = roots
        super().__init__(**kwargs)

    def _info(self):
        features = tfds.features.FeaturesDict({
            "dicom_id": tfds.features.Text(), "patient_id": tfds.features.Text(), "study_id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding=_ZLIB),
            "masks": tfds.features.Tensor(shape=(None, None, None), dtype=np.bool_, encoding=_ZLIB),
            "mask_names": tfds.features.Sequence(tfds.features.Text()),
            "has_masks": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "source_shape": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "scale_yx": tfds.features.Tensor(shape=(2,), dtype=np.float32),  # resized pixels per source pixel
            "points_yx": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),  # resized frame (row, col)
            "durations": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "sigma_yx": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),  # resized pixels; see has_sigma
            "has_sigma": np.bool_,
            "label_names": tfds.features.Sequence(tfds.features.Text()),
            "label_values": tfds.features.Tensor(shape=(None,), dtype=np.float32),  # NaN = blank
            "meta": tfds.features.Text(),  # JSON of the reader's extras
        })
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features,
                                     metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        root, mimic_root = self._roots or _find_roots(os.fspath(dl_manager.manual_dir), self.FOLDER)
        self.info.metadata["records"] = {"train": []}
        return {"train": self._generate_examples(root, mimic_root)}

    def _generate_examples(self, root: str, mimic_root: str):
        cfg = self.builder_config
        rows = self.info.metadata["records"]["train"]
        options = dict(cfg.reader_options)
        raw = self.READER(root, mimic_root, **options).records()
        with tempfile.TemporaryDirectory(prefix="gazejax_tfds_") as cache:  # the pipeline's resize, reused exactly
            cases = cxr_records.prepare_records(self.DATASET, root, mimic_root, cache, cfg.image_size, pad=cfg.pad,
                                                 label_set="5label", reader_options=options)
            for index, (rec, case) in enumerate(zip(raw, cases)):
                row = _light_row(rec, case)
                rows.append(row)
                yield index, _example(row, case)


def _light_row(rec: cxr_labels.CXRRecord, case: cxr_records.CXRCase) -> dict:
    """The JSON fields of an example (everything but the image and masks)."""
    if rec.dicom_id != case.dicom_id:
        raise AssertionError(f"reader order changed between two reads: {rec.dicom_id} != {case.dicom_id}")
    return common.to_json({
        "dicom_id": case.dicom_id, "patient_id": case.patient_id, "study_id": case.study_id,
        "image_shape": case.image_shape, "source_shape": case.source_shape, "scale_yx": case.scale_yx,
        "points_yx": case.points_yx, "durations": case.durations, "sigma_yx": case.sigma_yx,
        "labels": {k: float(v) for k, v in rec.labels.items()}, "mask_names": case.mask_names,
        "has_masks": case.has_masks, "meta": case.meta,
        "fixation_readers": [str(r) for r in rec.fixations.readers],
        "boxes": {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in rec.boxes.items()}})


def _example(row: dict, case: cxr_records.CXRCase) -> dict:
    n, size = len(row["points_yx"]), tuple(row["image_shape"])
    masks = case.masks()
    return {
        "dicom_id": row["dicom_id"], "patient_id": row["patient_id"], "study_id": row["study_id"],
        "image": np.asarray(case.image(), np.float32),
        "masks": np.zeros(size + (0,), bool) if masks is None else np.asarray(masks, bool),
        "mask_names": list(row["mask_names"]), "has_masks": np.asarray(row["has_masks"] or [], bool),
        "source_shape": np.asarray(row["source_shape"], np.int32), "scale_yx": np.asarray(row["scale_yx"], np.float32),
        "points_yx": np.asarray(row["points_yx"], np.float32).reshape(n, 2),
        "durations": np.asarray(row["durations"], np.float32),
        "sigma_yx": np.asarray(row["sigma_yx"] if row["sigma_yx"] is not None else np.ones((n, 2)),
                               np.float32).reshape(n, 2),
        "has_sigma": row["sigma_yx"] is not None, "label_names": list(row["labels"]),
        "label_values": np.asarray(list(row["labels"].values()), np.float32), "meta": json.dumps(row["meta"])}


class EgdCxr(_CXRBuilder):
    """EGD-CXR (Karargyris et al. 2021)."""

    DATASET, FOLDER, READER = "egd_cxr", "egd-cxr", egd_cxr.EGDCXR
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
        title="EGD-CXR", url="https://physionet.org/content/egd-cxr/1.0.0/", folder="egd-cxr/".ljust(15),
        layout="master_sheet.csv, fixations.csv, eye_gaze.csv, bounding_boxes.csv, audio_segmentation_transcripts/")
    BUILDER_CONFIGS = [make_config((512, 416)), make_config((1536, 1280)), make_config((224, 224))]


class Reflacx(_CXRBuilder):
    """REFLACX (Bigolin Lanfredi et al. 2022)."""

    DATASET, FOLDER, READER = "reflacx", "reflacx", reflacx.REFLACX
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
        title="REFLACX", url="https://physionet.org/content/reflacx-xray-localization/1.0.0/",
        folder="reflacx/".ljust(15),
        layout="main_data/metadata_phase_{1,2,3}.csv and main_data/<id>/fixations.csv, ...")
    BUILDER_CONFIGS = [make_config((512, 416)), make_config((224, 224))]


BUILDERS = {"egd_cxr": EgdCxr, "reflacx": Reflacx}


@dataclasses.dataclass
class TFDSCXRCase(cxr_records.CXRCase, common.StoredArrays):
    """A CXRCase whose image and masks come from the array_record files."""

    def image(self) -> np.ndarray:
        return self.stored("image")

    def masks(self) -> np.ndarray | None:
        return self.stored("masks") if self.mask_names else None


def _case(row: dict, index: int, reader: common.ExampleReader, label, mask) -> TFDSCXRCase:
    names = tuple(row["mask_names"])
    where = f"{reader.data_dir}#{index}"  # image_file / masks_file: a description, nothing is opened by path
    return TFDSCXRCase(
        dicom_id=row["dicom_id"], patient_id=row["patient_id"], study_id=row["study_id"], image_file=where,
        image_shape=tuple(row["image_shape"]), source_shape=tuple(row["source_shape"]),
        points_yx=np.asarray(row["points_yx"], np.float32).reshape(-1, 2),
        durations=np.asarray(row["durations"], np.float32),
        sigma_yx=None if row["sigma_yx"] is None else np.asarray(row["sigma_yx"], np.float32).reshape(-1, 2),
        scale_yx=np.asarray(row["scale_yx"], np.float32), label=label, label_mask=mask, mask_names=names,
        has_masks=np.asarray(row["has_masks"], bool) if names else None, masks_file=where if names else None,
        meta=dict(row["meta"]), reader=reader, index=index)


def prepare_records(dataset: str, root: str | None, mimic_root: str | None, data_dir: str,
                    image_size: Sequence[int], *, label_set: str = "3class", label_policy: Any = None,
                    pad: str = "symmetric", reader_options: Mapping[str, Any] | None = None,
                    **unused: Any) -> list[cxr_records.CXRCase]:
    """`gazejax.data.cxr.records.prepare_records` with the TFDS data set `dataset` in `data_dir` as the cache: the records (same
    order, fields and examples) of its config for (image_size, pad, reader_options), built there from `root` and
    `mimic_root` first when missing (both may be None for a data set built before)."""
    rows, cls, data_dir, config = _built(dataset, root, mimic_root, data_dir, image_size, pad, reader_options)
    labels, masks = cxr_labels.make_labels([_stub(r) for r in rows], label_set, label_policy)
    reader = common.ExampleReader(cls, data_dir, "train", config=config)
    return [_case(r, i, reader, labels[i], masks[i]) for i, r in enumerate(rows)]


def raw_records(dataset: str, root: str | None, mimic_root: str | None, data_dir: str, image_size: Sequence[int],
                *, pad: str = "symmetric", reader_options: Mapping[str, Any] | None = None
                ) -> dict[str, cxr_labels.CXRRecord]:
    """dicom_id -> the reader's record as stored in the built data set (labels, each fixation's reader id, boxes in
    source pixels; no image path, fixations without positions: those are in the cases), for methods that need the
    per-reader fields `prepare_records`' cases drop (GazAT)."""
    rows, *_ = _built(dataset, root, mimic_root, data_dir, image_size, pad, reader_options)
    if rows and "fixation_readers" not in rows[0]:
        raise ValueError(f"{data_dir}: TFDS {dataset} was built before reader ids were stored; rebuild it")
    return {r["dicom_id"]: _stub(r) for r in rows}


def _stub(row: dict) -> cxr_labels.CXRRecord:
    readers = np.asarray(row.get("fixation_readers", []), str)
    fix = cxr_labels.Fixations(points=np.zeros((len(readers), 2), np.float32),
                               durations=np.zeros(len(readers), np.float32), readers=readers)
    return cxr_labels.CXRRecord(dicom_id=row["dicom_id"], patient_id=row["patient_id"], study_id=row["study_id"],
                                image_path="", labels=row["labels"], fixations=fix,
                                boxes={k: np.asarray(v, np.float32).reshape(-1, 4)
                                       for k, v in row.get("boxes", {}).items()})


def _built(dataset, root, mimic_root, data_dir, image_size, pad, reader_options):
    """The rows of `dataset`'s config in `data_dir` (built from `root` first when missing), the builder class, the
    expanded data_dir and the builder config."""
    if dataset not in BUILDERS:
        raise ValueError(f"dataset must be one of {tuple(BUILDERS)}, got {dataset!r}")
    data_dir, config = os.path.expanduser(data_dir), make_config(image_size, pad, reader_options)
    cls = BUILDERS[dataset]
    builder = cls(data_dir=data_dir, config=config, file_format=common.FILE_FORMAT,
                  roots=(root, mimic_root) if root else None)
    if not builder.is_prepared() and not root:
        raise FileNotFoundError(f"{data_dir}: no built TFDS {dataset}/{config.name}; build it with python -m "
                                f"gazejax.data.tfds build {dataset} --manual_dir=... --data_dir={data_dir}")
    common.ensure_built(builder)
    return common.light_records(builder, "train"), cls, data_dir, config
