"""gazejax.predict on BraTS cases with untrained tiny exports: outputs in the input's exact geometry, ensembles equal
the mean of their models, bad inputs skipped and reported, finished cases skipped, mirror TTA exact."""
from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from gazejax import predict
from gazejax.data import transforms3d
from gazejax.data.brats import reader as brats
from gazejax.inference import volume
from tests.conftest import tiny_brats_config
from tests.inference.helpers import untrained_export


@pytest.fixture(scope="module")
def exports(tiny_brats_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    cfg = tiny_brats_config(tiny_brats_root, str(base / "cache"))
    with cfg.unlocked():
        cfg.eval.mode, cfg.eval.window, cfg.eval.gaze_window = "whole", (), ()
    return [untrained_export(cfg, str(base / f"m{seed}"), seed=seed) for seed in (0, 1)]


def _case_folder(tiny_brats_root):
    return tiny_brats_root, brats.list_cases(tiny_brats_root)


def _oblique_case(src: str, out: str) -> str:
    """A copy of case `src` cropped to an odd shape with an oblique, flipped affine and sform code 2."""
    case_id = "Oblique_001"
    folder = os.path.join(out, case_id)
    os.makedirs(folder)
    theta = 0.3
    affine = np.array([[-1.2 * np.cos(theta), -np.sin(theta), 0, 90.5], [np.sin(theta), 0.9 * np.cos(theta), 0, -20],
                       [0, 0, 2.5, 7.25], [0, 0, 0, 1]])
    _, paths, seg = brats.case_files(src)
    for name, path in list(paths.items()) + [("seg", seg)]:
        data = np.asarray(nib.load(path).dataobj)[1:38, 2:39, 3:32]
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, 1)
        img.set_sform(affine, 2)
        img.header["descrip"] = b"oblique test case"
        nib.save(img, os.path.join(folder, f"{case_id}_{name}.nii.gz"))
    return folder


def test_prediction_has_the_inputs_shape_affine_and_header(tiny_brats_root, exports, tmp_path, no_xla_opt):
    _, cases = _case_folder(tiny_brats_root)
    case = _oblique_case(cases[0], str(tmp_path / "in"))
    result = predict.predict([exports[0]], case, str(tmp_path / "out"), save_probabilities=True)
    assert result["done"] == 1 and not result["failures"].items
    src = nib.load(os.path.join(case, "Oblique_001_flair.nii.gz"))
    for name, dtype, shape in (("", np.uint8, (37, 37, 29)), ("_gaze", np.float32, (37, 37, 29)),
                               ("_probabilities", np.float32, (37, 37, 29, 3))):
        out = nib.load(str(tmp_path / "out" / f"Oblique_001{name}.nii.gz"))
        assert out.shape == shape and out.get_data_dtype() == dtype, name
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
        assert out.header["descrip"] == src.header["descrip"]
        np.testing.assert_allclose(out.header.get_zooms()[:3], src.header.get_zooms()[:3])
    labels = np.asarray(nib.load(str(tmp_path / "out" / "Oblique_001.nii.gz")).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    _, _, bbox = transforms3d.crop_to_nonzero(brats.read_case(case)["image"])
    inside = np.zeros(labels.shape, bool)
    inside[tuple(slice(a, b) for a, b in bbox)] = True
    assert labels[inside].any() and not labels[~inside].any()  # zeros outside the brain box
    prob = np.asarray(nib.load(str(tmp_path / "out" / "Oblique_001_probabilities.nii.gz")).dataobj)
    on = prob > 0.5  # the label map is the thresholded probability map (ET -> 4, TC\ET -> 1, WT\TC -> 2)
    expect = np.where(on[..., 0], 4, np.where(on[..., 1], 1, np.where(on[..., 2], 2, 0)))
    np.testing.assert_array_equal(labels, expect)


def test_explicit_modality_files_name_the_case_after_the_flair(tiny_brats_root, exports, tmp_path, no_xla_opt):
    _, cases = _case_folder(tiny_brats_root)
    _, paths, _ = brats.case_files(cases[1])
    arg = ",".join(f"{m}={p}" for m, p in paths.items())
    predict.predict([exports[0]], arg, str(tmp_path / "files"))
    predict.predict([exports[0]], cases[1], str(tmp_path / "folder"))
    name = f"{os.path.basename(cases[1])}.nii.gz"
    a = np.asarray(nib.load(str(tmp_path / "files" / name)).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "folder" / name)).dataobj)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no t2 file given"):
        predict.predict([exports[0]], ",".join(f"{m}={p}" for m, p in paths.items() if m != "t2"), str(tmp_path))


def test_ensemble_equals_the_mean_of_its_models(tiny_brats_root, exports, tmp_path, no_xla_opt):
    _, cases = _case_folder(tiny_brats_root)
    probs = []
    for name, models in (("a", exports[:1]), ("b", exports[1:]), ("ab", exports)):
        predict.predict(models, cases[2], str(tmp_path / name), save_probabilities=True)
        path = tmp_path / name / f"{os.path.basename(cases[2])}_probabilities.nii.gz"
        probs.append(np.asarray(nib.load(str(path)).dataobj))
    assert not np.allclose(probs[0], probs[1])  # two different models
    np.testing.assert_allclose(probs[2], (probs[0] + probs[1]) / 2, atol=1e-6)


def test_bad_case_is_reported_and_skipped_and_finished_cases_are_not_redone(tiny_brats_root, exports, tmp_path, capsys,
                                                                              no_xla_opt):
    folder, cases = _case_folder(tiny_brats_root)
    inputs = tmp_path / "in"
    for c in cases[:3]:
        shutil.copytree(c, inputs / os.path.basename(c))
    bad = inputs / os.path.basename(cases[1])
    flair = next(p for p in os.listdir(bad) if "flair" in p)
    with open(bad / flair, "r+b") as f:
        f.truncate(300)
    out = tmp_path / "out"
    result = predict.predict([exports[0]], str(inputs), str(out))
    assert result["done"] == 2 and len(result["failures"].items) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("gazejax.predict: skipped"))
    assert os.path.basename(cases[1]) in line and "unreadable NIfTI" in line
    done = sorted(os.listdir(out))
    assert done == sorted(f"{os.path.basename(c)}{s}.nii.gz" for c in (cases[0], cases[2]) for s in ("", "_gaze"))
    before = {n: os.stat(out / n).st_mtime_ns for n in done}
    again = predict.predict([exports[0]], str(inputs), str(out))
    assert again["skipped"] == 2 and again["done"] == 0
    assert {n: os.stat(out / n).st_mtime_ns for n in done} == before  # untouched
    redo = predict.predict([exports[0]], str(inputs), str(out), overwrite=True)
    assert redo["done"] == 2


def test_cli_exit_status_and_summary_when_an_input_fails(tiny_brats_root, exports, tmp_path, capsys, no_xla_opt):
    _, cases = _case_folder(tiny_brats_root)
    inputs = tmp_path / "in"
    shutil.copytree(cases[0], inputs / os.path.basename(cases[0]))
    os.makedirs(inputs / "Broken_002")
    with open(inputs / "Broken_002" / "Broken_002_flair.nii.gz", "wb") as f:
        f.write(b"not a nifti")
    predict.FLAGS.unparse_flags()
    predict.FLAGS(["predict", f"--model={exports[0]}", f"--input={inputs}", f"--output={tmp_path / 'out'}"])
    assert predict.main([]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 inputs failed" in captured.err and "Broken_002" in captured.err
    assert "predicted 1 cases" in captured.out


class _Fake:
    """A stand-in model whose 'probabilities' are a fixed function of the voxel index (not mirror-equivariant)."""

    def __init__(self):
        self.config, self.stage, self.predict = None, None, None
        self.method = self
        self.inference = self

    @staticmethod
    def run(predict, image, config, stage):
        idx = np.indices(image.shape[:3]).astype(np.float32)
        seg = np.stack([idx[0] / 10, idx[1] / 10, image[..., 0]], axis=-1)
        return {"seg_prob": seg, "gaze_prob": None, "gaze_frame": None}


def test_tta_averages_the_eight_mirrored_predictions_mapped_back():
    rng = np.random.default_rng(0)
    image = rng.random((4, 5, 3, 4)).astype(np.float32)
    prob, gaze, _ = volume.infer([_Fake()], image, tta=True)
    idx = np.indices(image.shape[:3]).astype(np.float32)
    # channel 0 / 1: index i and its mirror n-1-i each in half of the 8 copies -> (n - 1) / 2 / 10 everywhere
    np.testing.assert_allclose(prob[..., 0], np.full(image.shape[:3], (4 - 1) / 20), atol=1e-6)
    np.testing.assert_allclose(prob[..., 1], np.full(image.shape[:3], (5 - 1) / 20), atol=1e-6)
    np.testing.assert_allclose(prob[..., 2], image[..., 0], atol=1e-6)  # equivariant channel: unchanged
    assert gaze is None
    plain, _, _ = volume.infer([_Fake()], image, tta=False)
    np.testing.assert_allclose(plain[..., 0], idx[0] / 10)


def test_bench_predict_row_counts_cases_per_second(tiny_brats_root, exports, no_xla_opt):
    from gazejax.bench import predict as bench_predict

    _, cases = _case_folder(tiny_brats_root)
    row = bench_predict.run([exports[0]], cases[0])
    assert row["unit"] == "cases" and row["inputs"] == 1
    assert row["per_s"] == pytest.approx(1 / row["steady_s"]) and row["first_s"] > 0
    assert "1 cases" in bench_predict.format_row(row) and "cases/s" in bench_predict.format_row(row)
