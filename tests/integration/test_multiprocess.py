"""Multi-process data parallelism on the toy method (tests/engine/toy.py, with BatchNorm over the global batch and
per-example noise): 2 local CPU processes x 2 devices (gloo collectives, `jax.distributed`) train to the same losses
and parameters as 1 process x 4 devices, with one metrics row per step and one report (process 0), and one
checkpoint written by both; a broken checkpoint is set aside once. The real networks' runs are
tests/integration/test_<method>.py.

The worker half of this file runs as `python tests/integration/test_multiprocess.py MODE WORKDIR` in a subprocess
whose environment sets the device count and (for 2-process runs) GAZEJAX_COORDINATOR / _NUM_PROCESSES /
_PROCESS_ID, the variables `launch/local_multiprocess.sh` sets.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 16  # optimiser steps per run: 2 epochs of 64 examples, global batch 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEJAX_")}
    # unoptimised XLA programs (compilation dominates these tiny runs; every process compiles the same way)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _start(mode: str, workdir: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, workdir], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:  # a worker left waiting for its dead peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _final_state(workdir: str) -> dict:
    """The newest checkpoint's train state as numpy arrays (read without a device topology)."""
    import jax
    import orbax.checkpoint as ocp

    ckpt = os.path.join(workdir, "checkpoints")
    path = os.path.join(ckpt, str(max(int(s) for s in os.listdir(ckpt) if s.isdigit())), "state")
    reader = ocp.PyTreeCheckpointer()
    tree = reader.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                        is_leaf=lambda x: not isinstance(x, (dict, list, tuple)))
    return reader.restore(path, restore_args=args)


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = np.asarray(value)
    return out


def _losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["train/loss"] for r in sorted(rows, key=lambda r: r["step"]) if "train/loss" in r]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    multi = str(tmp_path / "two_processes")
    workers = _start_pair("train", multi, devices=2)
    single = str(tmp_path / "one_process")
    reference = _start("train", single, _env(4))
    outs = _finish(workers + [reference], timeout=540)
    assert all("processes=2 devices=4 local=2" in out for out in outs[:2])
    assert "processes=1 devices=4 local=4" in outs[2]

    # host 0 alone writes logs and the report; both processes wrote the one checkpoint collectively
    for name in ("metrics.jsonl", "report.md", "results.json", "config.json"):
        assert os.path.exists(os.path.join(multi, name)), name
    assert len(_losses(multi)) == STEPS, "a metric row per step, written once (host 0 only)"
    state_dir = os.path.join(multi, "checkpoints", str(STEPS), "state")
    assert {"process_0", "process_1"} <= set(os.listdir(os.path.join(state_dir, "array_metadatas")))
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)

    a, b = _flat(_final_state(multi)), _flat(_final_state(single))
    assert sorted(a) == sorted(b)
    assert int(a["step"]) == int(b["step"]) == STEPS
    params = [k for k in a if k.startswith("params/")]
    stats = [k for k in a if "batch_stats" in k]
    assert params and stats
    for key in params + stats:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # the parameters moved (equality is not that of two untrained models), and evaluation ran on both processes
    assert len(set(_losses(multi))) == STEPS
    scores = []
    for workdir in (multi, single):
        with open(os.path.join(workdir, "results.json")) as f:
            scores.append(json.load(f)["test"]["neg_mse"])
    assert np.isfinite(scores[0]) and scores[0] == pytest.approx(scores[1], rel=1e-5)


def test_initialize_is_a_no_op_alone_and_checks_the_process_id(monkeypatch):
    from gazejax.engine import parallel
    from tests.conftest import tiny_brats_config

    for key in [k for k in os.environ if k.startswith("GAZEJAX_")]:
        monkeypatch.delenv(key)
    cfg = tiny_brats_config("/nonexistent", "/nonexistent")
    assert parallel.maybe_initialize_distributed(cfg) is False and parallel.maybe_initialize_distributed() is False
    monkeypatch.setenv("GAZEJAX_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("GAZEJAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="process_id must be in"):
        parallel.maybe_initialize_distributed(cfg)  # raised before anything connects
    monkeypatch.setenv("GAZEJAX_NUM_PROCESSES", "1")  # one process: nothing to initialise
    assert parallel.maybe_initialize_distributed(cfg) is False


def _start_pair(mode: str, workdir: str, devices: int) -> list[subprocess.Popen]:
    """The 2 processes of one run, `devices` CPU devices each, coordinated over a free local port."""
    port = _free_port()
    return [_start(mode, workdir, _env(devices, GAZEJAX_COORDINATOR=f"127.0.0.1:{port}", GAZEJAX_NUM_PROCESSES="2",
                                       GAZEJAX_PROCESS_ID=str(i)))
            for i in range(2)]


@pytest.mark.slow
def test_two_processes_set_a_broken_checkpoint_aside_once(tmp_path):
    """The toy method trained by 2 processes, its newest checkpoint (step 16) truncated: both processes verify it,
    process 0 alone moves it to checkpoints_broken/ (before, both moved it and the slower one failed on the missing
    folder), and both resume from step 8."""
    workdir = str(tmp_path / "run")
    _finish(_start_pair("train", workdir, devices=1), timeout=180)
    meta = os.path.join(workdir, "checkpoints", "16", "meta", "metadata")
    with open(meta, "rb") as f:
        data = f.read()
    with open(meta, "wb") as f:
        f.write(data[: len(data) // 2])
    outs = _finish(_start_pair("recover", workdir, devices=1), timeout=180)
    assert all("recovered=8 processes=2" in out for out in outs), [o[-2000:] for o in outs]
    assert os.listdir(os.path.join(workdir, "checkpoints_broken")) == ["16"]
    assert sorted(s for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()) == ["8"]


def _toy_worker(mode: str, workdir: str) -> None:
    """One process of a toy run: "train" trains 2 epochs (checkpoints at steps 8 and 16) over all devices of all
    processes; "recover" sets broken checkpoints aside and prints the step it resumes from."""
    import jax

    from gazejax.engine import checkpoint, parallel, trainer as train
    from tests.engine import toy

    parallel.maybe_initialize_distributed()
    print(f"processes={jax.process_count()} devices={jax.device_count()} local={jax.local_device_count()}",
          flush=True)
    if mode == "train":
        method = toy.make_method(epochs=2, batch_norm=True, noise=0.1)
        train.train_and_evaluate(toy.config(num_devices=0), workdir, method)  # 0: every device of every process
        return
    ckpt = checkpoint.Checkpointer(workdir, keep_last=2, async_save=False)
    try:
        print(f"recovered={ckpt.recover()} processes={jax.process_count()}", flush=True)
    finally:
        ckpt.close()


if __name__ == "__main__":
    _toy_worker(*sys.argv[1:3])
