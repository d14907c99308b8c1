"""TFDS builders (gazejax.data.tfds) build array_record from synthetic manual folders with TensorFlow unimportable,
and the records read back give bit-identical training examples to the folder-reading pipelines."""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")


@pytest.fixture
def no_tensorflow():
    """The test must not import TensorFlow (the project's environments do not install it, so building there is the
    proof that it is not needed; where TF is installed this still catches any import of it)."""
    if "tensorflow" in sys.modules:
        pytest.skip("TensorFlow was already imported by an earlier test")
    yield
    assert "tensorflow" not in sys.modules


def _assert_same_examples(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_brats2020_build_and_read(tiny_brats_root, tmp_path, no_tensorflow):
    from gazejax.data.brats import reader as brats
    from gazejax.data.brats import pipeline as brats_pipeline
    from gazejax.data.brats import records as brats_records
    from gazejax.data import tfds as gtfds

    data_dir = str(tmp_path / "tfds")
    records = brats_pipeline.tfds_records(tiny_brats_root, data_dir, "expert", 3.0)
    survival = brats.read_survival(tiny_brats_root)
    files = [brats_records.prepare_case(c, str(tmp_path / "cache"), os.path.join(tiny_brats_root, "gaze"), "expert",
                                         3.0, survival) for c in brats.list_cases(tiny_brats_root)]
    assert [r.case_id for r in records] == [r.case_id for r in files] and len(records) == 8
    assert sum(r.has_gaze for r in records) == sum(r.has_gaze for r in files) > 0
    for ours, ref in zip(records, files):
        assert (ours.bbox, ours.shape, ours.spacing, ours.has_seg, ours.survival_class) == \
               (ref.bbox, ref.shape, ref.spacing, ref.has_seg, ref.survival_class)
        np.testing.assert_array_equal(ours.points, ref.points)
        assert ours.gaze_norm == ref.gaze_norm
        np.testing.assert_array_equal(ours.full_seg(), ref.full_seg())
    for i in (0, 5):  # random crop + augmentation of the same case, same seed: identical examples
        ours, ref = (brats_pipeline.make_train_example(r[i], (32, 32, 32), 3.0, np.random.default_rng(i))
                     for r in (records, files))
        _assert_same_examples(ours, ref)
    source = gtfds.data_source("brats2020", data_dir, split="train")  # the tfds.data_source view, random access
    assert len(source) == 8 and source[3]["case_id"].decode() == files[3].case_id
    np.testing.assert_array_equal(source[3]["image"], files[3].image())
    again = pickle.loads(pickle.dumps(records[2]))  # Grain worker processes receive pickled records
    np.testing.assert_array_equal(again.image(), files[2].image())
    # readers select at load time: one build serves expert, non-expert and all gaze
    every = brats_pipeline.tfds_records(None, data_dir, "all", 3.0)
    assert sum(len(r.points) for r in every) > sum(len(r.points) for r in records)


@pytest.mark.parametrize("dataset,label_set", [("egd_cxr", "3class"), ("reflacx", "5label")])
def test_cxr_build_and_read(dataset, label_set, tmp_path, no_tensorflow):
    from gazejax.data.cxr import pipeline as cxr_pipeline
    from gazejax.data.cxr import records as cxr_records
    from gazejax.data import tfds as gtfds
    from gazejax.data.synthetic import cxr as synth
    from gazejax.data.tfds import cxr as tfds_cxr

    make = synth.generate_egd_cxr if dataset == "egd_cxr" else synth.generate_reflacx
    root, mimic_root = make(str(tmp_path / "synthetic"), images=6, seed=1, size=(96, 80))
    data_dir = str(tmp_path / "tfds")
    records = tfds_cxr.prepare_records(dataset, root, mimic_root, data_dir, (64, 52), label_set=label_set)
    files = cxr_records.prepare_records(dataset, root, mimic_root, str(tmp_path / "cache"), (64, 52),
                                         label_set=label_set)
    assert [r.dicom_id for r in records] == [r.dicom_id for r in files] and len(records) == 6
    assert sum(r.has_gaze for r in records) > 0
    grids = {"cam": (8, 6), "full": (64, 52)}
    for ours, ref in zip(records, files):
        np.testing.assert_array_equal(ours.label, ref.label)
        np.testing.assert_array_equal(ours.label_mask, ref.label_mask)
        for augment in (False, True):
            a, b = (cxr_pipeline.make_example(r, grids, augment=augment, rng=np.random.default_rng(3),
                                              max_fixations=500) for r in (ours, ref))
            _assert_same_examples(a, b)
    if dataset == "egd_cxr":
        assert records[0].masks() is not None and records[0].masks().shape == (64, 52, 4)
    source = gtfds.data_source(f"{dataset}/64x52_symmetric", data_dir, split="train")
    assert len(source) == 6 and source[1]["dicom_id"].decode() == files[1].dicom_id


def test_cli_builds_from_manual_folder_and_unbuilt_is_a_clear_error(tiny_brats_root, tmp_path, no_tensorflow):
    from gazejax.data.tfds import __main__ as cli
    from gazejax.data.tfds import brats2020

    with pytest.raises(FileNotFoundError, match="no built TFDS brats2020"):
        brats2020.case_records(str(tmp_path / "empty"), None, "expert", 3.0)
    manual = os.path.dirname(tiny_brats_root)  # holds MICCAI_BraTS2020_TrainingData/
    assert cli.main(["build", "brats2020", "--manual_dir", manual, "--data_dir", str(tmp_path / "tfds")]) == 0
    assert len(brats2020.case_records(str(tmp_path / "tfds"), None, "expert", 3.0)) == 8
    assert cli.main(["build", "brats2020", "--manual_dir", str(tmp_path / "nowhere")]) == 2


def test_brats_method_reads_the_same_examples_from_tfds(tiny_brats_root, tmp_path, no_tensorflow):
    """`data.source=tfds` (built from data.root on first use) feeds san_aab the same training examples and splits."""
    from gazejax.methods.san_aab import spec as san_aab
    from tests.conftest import tiny_brats_config

    bundles = {}
    for source in ("files", "tfds"):
        cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"))
        cfg.data.source = source
        bundles[source] = san_aab.make_data(cfg)
    files, tfds_ = bundles["files"], bundles["tfds"]
    assert os.path.isdir(tmp_path / "cache" / "tfds" / "brats2020")  # really built and read through TFDS
    assert files.num_train == tfds_.num_train and files.num_train > 0
    rng = [np.random.default_rng(5), np.random.default_rng(5)]
    _assert_same_examples(files.augment(files.train[0], rng[0]), tfds_.augment(tfds_.train[0], rng[1]))
    assert [r.case_id for r in files.splits["test"]] == [r.case_id for r in tfds_.splits["test"]]


def test_gazat_reads_the_same_items_from_tfds(tmp_path, no_tensorflow):
    """GazAT's bundle (per-fixation readers, reader weights, REFLACX finding boxes, examples, splits) is the same from
    the folders and from the TFDS records (which therefore store each fixation's reader and the boxes)."""
    from configs import gazat as gazat_config
    from gazejax.data.synthetic import cxr as synth
    from gazejax.data.cxr import reflacx
    from gazejax.methods.gazat import data as gazat_data

    root, mimic_root = synth.generate_reflacx(str(tmp_path / "synthetic"), images=30, seed=2, size=(96, 80))
    readings = sorted({str(r) for rec in reflacx.REFLACX(root, mimic_root).records() for r in rec.fixations.readers})
    bundles = {}
    for source in ("files", "tfds"):
        c = gazat_config.get_config("method=gazat")
        c.data.update({"root": root, "mimic_root": mimic_root, "cache_dir": str(tmp_path / "cache"),
                       "image_size": (48, 40), "source": source})
        c.data.reader_weights = {r: 2.0 for r in readings[::2]}  # every other reading (REFLACX reader = reading id)
        c.finetune.label_fractions = (0.5,)
        c.finetune.subset_draws = 1  # one draw: the subset is named "label_50pct"
        c.batch_size = 4
        bundles[source] = gazat_data.make_bundle(c, lambda ex, rng: ex, lambda ex, rng: ex)
    files, tfds_ = bundles["files"], bundles["tfds"]
    assert os.path.isdir(tmp_path / "cache" / "tfds" / "reflacx")  # really built and read through TFDS
    assert files.info["test_ids"] == tfds_.info["test_ids"] and files.num_train == tfds_.num_train
    held_out = files.splits["test"].items + files.splits["val"].items
    assert max(len(it.reader_weights) for it in held_out) > 1  # several readers, weights and boxes: not trivial
    assert 2.0 in np.concatenate([it.reader_weights for it in held_out]) and sum(len(it.findings) for it in held_out)
    for a, b in zip(held_out, tfds_.splits["test"].items + tfds_.splits["val"].items):
        np.testing.assert_array_equal(a.readers, b.readers)
        np.testing.assert_array_equal(a.reader_weights, b.reader_weights)
        np.testing.assert_allclose(a.findings, b.findings, rtol=1e-6)
    _assert_same_examples(files.train[0], tfds_.train[0])
    _assert_same_examples(files.train_sets["label_50pct"][1], tfds_.train_sets["label_50pct"][1])
