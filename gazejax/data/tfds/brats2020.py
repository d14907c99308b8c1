"""TFDS builder `brats2020`: BraTS 2020 training (and validation) cases with gazejax's gaze files, as array_record,
and `case_records`, the BraTS pipeline's records read from it (`config.data.source="tfds"`).

An example holds what `gazejax.data.brats.records.preprocess_case` makes of a case (the volume cropped to its
non-zero box and intensity-normalised, float32 [x, y, z, 4] in the order flair, t1, t1ce, t2; seg uint8 [x, y, z]),
the crop box and original geometry, every reader's fixations in original voxel coordinates, and the survival row.
Folds, data ratios and reader selection stay in the pipeline, so one build serves every experiment.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from gazejax.data.brats import reader as brats
from gazejax.data.brats import records as brats_records
from gazejax.data.tfds import common

tfds = common.import_tfds()

TRAIN_DIR, VALIDATION_DIR = "MICCAI_BraTS2020_TrainingData", "MICCAI_BraTS2020_ValidationData"
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
BraTS 2020 needs a (free) registration: https://www.med.upenn.edu/cbica/brats2020/registration.html .
Put into the manual folder (`--manual_dir`, default ~/tensorflow_datasets/downloads/manual):
  {TRAIN_DIR}/BraTS20_Training_XXX/BraTS20_Training_XXX_{{flair,t1,t1ce,t2,seg}}.nii[.gz]
  {TRAIN_DIR}/survival_info.csv, name_mapping.csv       (optional)
  {TRAIN_DIR}/gaze/<case_id>_fixations.csv               (optional; gazejax's gaze format, see README)
  {VALIDATION_DIR}/...                          (optional: a "validation" split, cases without seg)
The manual folder may also be the {TRAIN_DIR} folder itself.
"""
_ZLIB = tfds.features.Encoding.ZLIB
_F64 = np.float64


def _find_folders(manual_dir: str) -> dict[str, str]:
    """split -> BraTS folder under `manual_dir` (or `manual_dir` itself as the training folder)."""
    manual_dir = os.fspath(manual_dir)
    nested = os.path.join(manual_dir, TRAIN_DIR)
    if not os.path.isdir(nested):
        return {"train": manual_dir}
    folders = {"train": nested}
    if os.path.isdir(os.path.join(manual_dir, VALIDATION_DIR)):
        folders["validation"] = os.path.join(manual_dir, VALIDATION_DIR)
    return folders


class Brats2020(tfds.core.GeneratorBasedBuilder):
    """BraTS 2020 + gaze; `root=` (a BraTS folder) replaces the manual folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Cropped, normalised volumes, labels, geometry, fixations of all readers, survival."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, root: str | None = None, **kwargs: Any):
        self._root = root
        super().__init__(**kwargs)

    def _info(self):
        features = tfds.features.FeaturesDict({
            "case_id": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=(None, None, None, 4), dtype=np.float32, encoding=_ZLIB),
            "seg": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8, encoding=_ZLIB),  # [0,0,0]: none
            "has_seg": np.bool_,
            "bbox": tfds.features.Tensor(shape=(3, 2), dtype=np.int32),  # half-open crop box in the original array
            "shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),  # original X, Y, Z
            "affine": tfds.features.Tensor(shape=(4, 4), dtype=_F64),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=_F64),
            "gaze_points": tfds.features.Tensor(shape=(None, 3), dtype=_F64),  # original voxel coordinates
            "gaze_start_s": tfds.features.Tensor(shape=(None,), dtype=_F64),
            "gaze_duration_s": tfds.features.Tensor(shape=(None,), dtype=_F64),
            "gaze_slice_axis": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "gaze_reader_id": tfds.features.Sequence(tfds.features.Text()),
            "gaze_expertise": tfds.features.Sequence(tfds.features.Text()),
            "survival_class": np.int32,  # -1 unknown (see gazejax.data.brats.survival_class)
            "survival_days": np.float32,  # NaN unknown
            "age": np.float32,
            "extent_of_resection": tfds.features.Text(),
        })
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=features, metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # example i = case i in sorted case-id order (what brats.list_cases returns)
            homepage="https://www.med.upenn.edu/cbica/brats2020/")

    def _split_generators(self, dl_manager):
        folders = {"train": self._root} if self._root else _find_folders(dl_manager.manual_dir)
        self.info.metadata["records"] = {split: [] for split in folders}
        return {split: self._generate_examples(folder, split) for split, folder in folders.items()}

    def _generate_examples(self, root: str, split: str):
        survival = brats.read_survival(root)
        gaze_dir = os.path.join(root, "gaze")
        rows = self.info.metadata["records"][split]
        for index, case_dir in enumerate(brats.list_cases(root)):
            case_id = os.path.basename(os.path.normpath(case_dir))
            image, seg, meta = brats_records.preprocess_case(case_dir)
            gaze_file = brats.gaze_path(gaze_dir, case_id) if os.path.isdir(gaze_dir) else None
            fix = brats.read_fixations(gaze_file, shape=meta["shape"]) if gaze_file else None
            info = survival.get(case_id, {})
            rows.append(common.to_json({"case_id": case_id, "meta": meta, "survival_class": info.get(
                "survival_class", -1), "gaze": None if fix is None else dataclasses.asdict(fix)}))
            yield index, _example(case_id, image, seg, meta, fix, info)


BUILDERS = {"brats2020": Brats2020}


def _example(case_id: str, image: np.ndarray, seg: np.ndarray | None, meta: dict, fix: brats.Fixations | None,
             info: dict) -> dict:
    n = 0 if fix is None else len(fix)
    empty = brats.Fixations(reader_id=np.zeros(0, str), expertise=np.zeros(0, str), points=np.zeros((0, 3)),
                            start_s=np.zeros(0), duration_s=np.zeros(0), slice_axis=np.zeros(0, np.int8))
    fix = fix if n else empty
    nan = float("nan")
    return {
        "case_id": case_id, "image": image, "seg": np.zeros((0, 0, 0), np.uint8) if seg is None else seg,
        "has_seg": seg is not None, "bbox": np.asarray(meta["bbox"], np.int32),
        "shape": np.asarray(meta["shape"], np.int32), "affine": np.asarray(meta["affine"], _F64),
        "spacing": np.asarray(meta["spacing"], _F64), "gaze_points": np.asarray(fix.points, _F64).reshape(n, 3),
        "gaze_start_s": np.asarray(fix.start_s, _F64), "gaze_duration_s": np.asarray(fix.duration_s, _F64),
        "gaze_slice_axis": np.asarray(fix.slice_axis, np.int32), "gaze_reader_id": [str(r) for r in fix.reader_id],
        "gaze_expertise": [str(e) for e in fix.expertise],
        "survival_class": int(info.get("survival_class", -1)),
        "survival_days": nan if info.get("survival_days") is None else float(info["survival_days"]),
        "age": nan if info.get("age") is None else float(info["age"]),
        "extent_of_resection": str(info.get("extent_of_resection", "")),
    }


@dataclasses.dataclass
class TFDSCaseRecord(brats_records.CaseRecord, common.StoredArrays):
    """A CaseRecord whose arrays come from the array_record files."""

    def image(self) -> np.ndarray:
        return self.stored("image")

    def seg(self) -> np.ndarray | None:
        return self.stored("seg") if self.has_seg else None


def _fixations(row: dict | None) -> brats.Fixations | None:
    if row is None:
        return None
    return brats.Fixations(reader_id=np.asarray(row["reader_id"], str), expertise=np.asarray(row["expertise"], str),
                           points=np.asarray(row["points"], _F64).reshape(-1, 3),
                           start_s=np.asarray(row["start_s"], _F64), duration_s=np.asarray(row["duration_s"], _F64),
                           slice_axis=np.asarray(row["slice_axis"], np.int8))


def case_records(data_dir: str, root: str | None, readers: str, sigma: float, split: str = "train"
                 ) -> list[brats_records.CaseRecord]:
    """Records of `split` of the `brats2020` data set in `data_dir`, built from the BraTS folder `root` first when
    it is not there yet (root may be None for a data set built before). Same fields and examples as
    `brats_records.prepare_case` (gaze of `readers`, Gaussian `sigma` in voxels)."""
    data_dir = os.path.expanduser(data_dir)
    if root and not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such BraTS folder to build the TFDS data set from")
    builder = Brats2020(data_dir=data_dir, file_format=common.FILE_FORMAT, root=root or None)
    if not builder.is_prepared() and not root:
        raise FileNotFoundError(f"{data_dir}: no built TFDS brats2020 data set; build it with "
                                f"python -m gazejax.data.tfds build brats2020 --manual_dir=... --data_dir={data_dir}")
    common.ensure_built(builder)
    reader = common.ExampleReader(Brats2020, data_dir, split)
    return [brats_records.make_record(row["case_id"], row["meta"], _fixations(row["gaze"]), readers, sigma,
                                       row["survival_class"], data_dir, cls=TFDSCaseRecord, reader=reader, index=i)
            for i, row in enumerate(common.light_records(builder, split))]
