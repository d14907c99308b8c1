"""Spatial partitioning across processes: SAN+AAB (tiny) trained by 2 local CPU processes x 2 devices on a (data 2 x
spatial 2) mesh, each process reading its own examples and splitting them along depth over its two devices, gives
the losses, parameters and test Dice of the same mesh in 1 process x 4 devices (the reference), to 1e-5.

The worker half runs as `python tests/integration/test_multiprocess_spatial.py ROOT CACHE WORKDIR` in subprocesses
whose environment sets the device count and GAZEJAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests.integration.test_multiprocess import _env, _final_state, _finish, _flat, _free_port, _losses

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(args: list[str], env: dict):
    import subprocess

    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_with_spatial_partitioning_match_one_process(tmp_path, tiny_brats_root):
    cache = str(tmp_path / "cache")
    multi, single = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
    port = _free_port()
    workers = [_start([tiny_brats_root, cache + "_mp", multi],
                      _env(2, GAZEJAX_COORDINATOR=f"127.0.0.1:{port}", GAZEJAX_NUM_PROCESSES="2",
                           GAZEJAX_PROCESS_ID=str(i))) for i in range(2)]
    reference = _start([tiny_brats_root, cache + "_sp", single], _env(4))
    outs = _finish(workers + [reference], timeout=1200)
    assert all("processes=2 devices=4 mesh=(2, 2)" in out for out in outs[:2]), outs[0][-3000:]
    assert "processes=1 devices=4 mesh=(2, 2)" in outs[2]

    losses_multi, losses_single = _losses(multi), _losses(single)
    assert len(losses_multi) == len(losses_single) >= 2 and len(set(losses_single)) == len(losses_single)
    np.testing.assert_allclose(losses_multi, losses_single, rtol=1e-5)
    a, b = _flat(_final_state(multi)), _flat(_final_state(single))
    assert sorted(a) == sorted(b)
    params = [k for k in a if k.startswith("params/")]
    scale = max(float(np.max(np.abs(b[k]))) for k in params)  # relative to the tree (see tests/engine/test_spatial)
    for key in params:
        assert float(np.max(np.abs(a[key] - b[key]))) <= 1e-5 * scale, key
    dice = []
    for workdir in (multi, single):
        with open(os.path.join(workdir, "results.json")) as f:
            dice.append(json.load(f)["test"]["dice_mean"])
    assert np.isfinite(dice[0]) and dice[0] == pytest.approx(dice[1], rel=1e-5, abs=1e-6)


def _worker(root: str, cache: str, workdir: str) -> None:
    import jax

    from gazejax import methods
    from gazejax.engine import parallel, trainer as train
    from tests.conftest import tiny_brats_config

    parallel.maybe_initialize_distributed()
    cfg = tiny_brats_config(root, cache, batch_size=2, **{"mesh.spatial": 2, "num_devices": 0, "epochs": 1})
    cfg.eval.mode, cfg.eval.window = "window", (32, 32, 32)
    mesh = parallel.mesh_from_config(cfg)
    print(f"processes={jax.process_count()} devices={jax.device_count()} mesh={mesh.devices.shape}", flush=True)
    train.train_and_evaluate(cfg, workdir, methods.get(cfg.method_family))


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    _worker(*sys.argv[1:4])
