"""Resuming with another `config.mesh.spatial`: a tiny SAN+AAB run checkpointed on one device (mesh 1x1), stopped by
SIGTERM mid-epoch and resumed on 4 forced CPU devices with `mesh.spatial=4` (mesh 1x4) or `mesh.spatial=2` (2x2),
logs the losses of the uninterrupted one-device run step for step (SGD: the update is linear in the gradient, so
only the order of floating-point sums differs) and ends with the same parameters.

The worker half runs as `python tests/engine/test_spatial_resume.py OUT` in a subprocess with 4 forced devices (the
device count is fixed before JAX starts).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from tests import forced_devices

STOP = 3  # SIGTERM after this step of 6 (3 epochs of 2 steps): mid-epoch, so the data position comes back too
RESUME_MESHES = ((1, 4), (2, 2))  # (data, spatial) of the resumed runs
RTOL = 1e-5


@pytest.mark.slow
def test_a_one_device_checkpoint_resumes_on_a_spatial_mesh(tmp_path):
    res = forced_devices.run_worker(__file__, str(tmp_path / "resume.pkl"), timeout=1500)
    ref = res["reference"]
    assert sorted(ref["losses"]) == list(range(1, 7)) and len(set(ref["losses"].values())) == 6
    worst = {}
    for mesh, got in res["resumed"].items():
        assert sorted(got["losses"]) == sorted(ref["losses"]), mesh
        assert got["restored_on"] == [(("data", mesh[0]), ("spatial", mesh[1]))], mesh  # the new mesh's layout
        want = np.array([ref["losses"][s] for s in sorted(ref["losses"])])
        have = np.array([got["losses"][s] for s in sorted(ref["losses"])])
        loss_err = float(np.max(np.abs(have - want) / np.abs(want)))
        scale = max(float(np.max(np.abs(v))) for v in ref["params"].values())
        param_err = max(float(np.max(np.abs(got["params"][k] - v))) for k, v in ref["params"].items()) / scale
        assert loss_err <= RTOL and param_err <= RTOL, (mesh, loss_err, param_err)
        worst[mesh] = (loss_err, param_err)
    print("worst relative error (losses, parameters):", worst)


# ---- worker ------------------------------------------------------------------------------------------------------
def _config(root: str, cache: str, data: int, spatial: int):
    from tests.conftest import tiny_brats_config

    c = tiny_brats_config(root, cache, **{"data.crop_size": (32, 16, 16), "batch_size": 2, "epochs": 3,
                                          "optim.name": "sgd", "optim.lr": 0.1, "eval.mode": "whole",
                                          "eval.window": (), "eval.gaze_window": ()})
    c.num_devices, c.mesh.spatial = data * spatial, spatial
    return c


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _params(workdir: str, cfg, method) -> dict:
    """The last stage's final parameters as a flat {path: array} (its best checkpoint: the last, the one validated)."""
    import jax

    from gazejax.engine import trainer as train

    trainer = train.Trainer(cfg, workdir, method)
    try:
        state = trainer.stage_state(len(trainer.stages) - 1, trainer.init_variables())
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    finally:
        trainer.close()
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in flat}


def _worker(out_path: str, tmp: str) -> None:
    import jax

    from gazejax import methods
    from gazejax.data.synthetic import brats as synth
    from gazejax.engine import trainer as train
    from tests.conftest import sigterm_at_step

    assert jax.device_count() == 4, jax.devices()
    root = synth.generate(os.path.join(tmp, "data"), cases=8, seed=3, shape=(40, 40, 36), gaze_share=0.6)
    cache = os.path.join(tmp, "cache")
    one = _config(root, cache, 1, 1)
    method = methods.get(one.method_family)
    full, stopped = os.path.join(tmp, "full"), os.path.join(tmp, "stopped")
    train.train_and_evaluate(one, full, method)
    result = {"reference": {"losses": _losses(full), "params": _params(full, one, method)}, "resumed": {}}

    with pytest.MonkeyPatch.context() as patch:
        sigterm_at_step(patch, STOP)
        with pytest.raises(train.Preempted, match=f"SIGTERM at step {STOP}"):
            train.train_and_evaluate(one, stopped, method)
    assert max(_losses(stopped)) == STOP
    restore, meshes = train.Trainer._restore, []

    def restore_and_record(self, step, abstract):  # the meshes the restored arrays lie on
        out = restore(self, step, abstract)
        meshes.extend({tuple(x.sharding.mesh.shape.items()) for x in jax.tree.leaves(out[0])})
        return out

    train.Trainer._restore = restore_and_record  # a worker process of its own: nothing to put back
    for data, spatial in RESUME_MESHES:
        workdir = os.path.join(tmp, f"resumed_{data}x{spatial}")
        shutil.copytree(stopped, workdir)
        cfg = _config(root, cache, data, spatial)
        meshes.clear()
        train.train_and_evaluate(cfg, workdir, method)
        result["resumed"][(data, spatial)] = {"losses": _losses(workdir), "restored_on": sorted(set(meshes)),
                                              "params": _params(workdir, cfg, method)}
        print(f"resumed on {data}x{spatial}: {result['resumed'][(data, spatial)]['losses']}", flush=True)
    with open(out_path, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    forced_devices.worker_main(_worker)
