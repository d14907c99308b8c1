"""`gazejax.predict --spatial=N`: BraTS cases split along depth over N devices (a 2-D (data, spatial) mesh) give the
probabilities and gaze maps of `--spatial=1` to 1e-5 relative, in whole-volume and sliding-window inference, on 4
forced CPU devices; a bad N is refused in one line naming the flag.

The worker half runs as `python tests/inference/test_predict_spatial.py OUT` in a subprocess with 4 forced devices
(the device count is fixed before JAX starts).
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tests import forced_devices

SPATIAL = (1, 4, 2)  # 1 (mesh data 4) is the reference; 4: mesh 1x4; 2: mesh 2x2
MODES = {"whole": {"eval.mode": "whole", "eval.window": ()},  # one pass over the brain box padded to 48^3
         "window": {"eval.mode": "window", "eval.window": (32, 32, 32), "eval.batch": 3}}  # 8 windows, 3 a call
RTOL = 1e-5


@pytest.mark.slow
def test_spatial_predictions_equal_one_device_predictions(tmp_path):
    res = forced_devices.run_worker(__file__, str(tmp_path / "predict_spatial.pkl"), timeout=1200)
    worst = {}
    for mode in MODES:
        ref = res[(mode, 1)]
        assert ref["mesh"] == (4,)
        assert np.ptp(ref["probabilities"]) > 0.01 and np.ptp(ref["gaze"]) > 0  # not constant maps
        for spatial in SPATIAL[1:]:
            got = res[(mode, spatial)]
            assert got["mesh"] == (4 // spatial, spatial), (mode, spatial)
            for key in ("probabilities", "gaze"):
                assert got[key].shape == ref[key].shape, (mode, spatial, key)
                err = float(np.max(np.abs(got[key] - ref[key])) / np.max(np.abs(ref[key])))
                assert err <= RTOL, f"{mode} --spatial={spatial} {key}: relative error {err:.2e}"
                worst[(mode, spatial, key)] = err
    print("worst relative error:", worst)


def test_bad_spatial_is_refused_in_one_line_naming_the_flag(tmp_path, capsys):
    import jax

    from gazejax import predict

    n = jax.device_count() + 1  # never divides the device count
    predict.FLAGS.unparse_flags()
    predict.FLAGS(["predict", f"--model={tmp_path / 'm'}", f"--input={tmp_path}", f"--output={tmp_path / 'out'}",
                   f"--spatial={n}"])
    try:
        assert predict.main([]) == 1
    finally:
        predict.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip()
    assert err == (f"gazejax.predict: error: --spatial={n} must be >= 1 and divide the mesh's {jax.device_count()} "
                   f"devices")


def test_models_that_spatial_cannot_split_are_refused():
    from gazejax.inference import common

    whole = {"kind": "volume", "preprocessing": {"eval_mode": "whole", "pad_multiple": 16}}
    window = {"kind": "volume", "preprocessing": {"eval_mode": "window", "window": [32, 32, 32],
                                                  "gaze_window": [48, 48, 48], "pad_multiple": 16}}
    for n in (1, 2, 4, 8, 16):
        common.check_spatial(n, whole, "m")
    common.check_spatial(16, window, "m")
    with pytest.raises(ValueError, match=r"^--spatial=32 does not divide the input depth of m \(whole brain boxes "
                                         r"padded to multiples of 16\): use a divisor of 16$"):
        common.check_spatial(32, whole, "m")
    with pytest.raises(ValueError, match=r"^--spatial=3 does not divide the input depth of m \(window 32\)"):
        common.check_spatial(3, window, "m")
    with pytest.raises(ValueError, match=r"^--spatial=32 does not divide the input depth of m \(gaze_window 48\)"):
        common.check_spatial(32, dict(window, preprocessing=dict(window["preprocessing"], window=[64, 64, 64])), "m")
    with pytest.raises(ValueError, match=r"^--spatial=2: splits 3D volumes along depth over devices; m is a model of "
                                         r"2D images: use --spatial=1$"):
        common.check_spatial(2, {"kind": "image", "preprocessing": {}}, "m")
    common.check_spatial(1, {"kind": "image", "preprocessing": {}}, "m")


# ---- worker ------------------------------------------------------------------------------------------------------
def _worker(out_path: str, tmp: str) -> None:
    import jax
    import nibabel as nib

    from gazejax import predict
    from gazejax.data.synthetic import brats as synth
    from gazejax.engine import predictor
    from tests.conftest import tiny_brats_config
    from tests.inference.helpers import untrained_export

    assert jax.device_count() == 4, jax.devices()
    root = synth.generate(os.path.join(tmp, "data"), cases=1, seed=3, shape=(40, 40, 36), gaze_share=0.6)
    meshes, bind = [], predictor.bind

    def bind_and_record(apply_fn, variables, mesh):  # the mesh each model is applied on
        meshes.append(mesh.devices.shape)
        return bind(apply_fn, variables, mesh)

    predictor.bind = bind_and_record
    results = {}
    for seed, (mode, overrides) in enumerate(MODES.items()):
        cfg = tiny_brats_config(root, os.path.join(tmp, "cache"), **overrides, **{"eval.gaze_window": ()})
        model = untrained_export(cfg, os.path.join(tmp, f"model_{mode}"), seed=seed)
        for spatial in SPATIAL:
            out = os.path.join(tmp, f"out_{mode}_{spatial}")
            meshes.clear()
            result = predict.predict([model], root, out, save_probabilities=True, spatial=spatial)
            assert result["done"] == 1 and not result["failures"].items, result
            files = sorted(f for f in os.listdir(out) if f.endswith(".nii.gz"))
            read = {name: np.asarray(nib.load(os.path.join(out, f)).dataobj, np.float64)
                    for name in ("probabilities", "gaze") for f in files if f.endswith(f"_{name}.nii.gz")}
            results[(mode, spatial)] = {"mesh": meshes[0], **read}
            print(f"{mode} --spatial={spatial}: mesh {meshes[0]}", flush=True)
    with open(out_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    forced_devices.worker_main(_worker)
