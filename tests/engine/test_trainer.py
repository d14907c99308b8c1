"""The trainer end to end on tiny synthetic BraTS: resume after SIGTERM reproduces the uninterrupted losses,
1 device and 2 devices give the same losses, a NaN loss stops the run and keeps the last good checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import tiny_brats_config

from gazejax import methods


def _losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "train/loss" in row:
                out[row["step"]] = row["train/loss"]
    return out


def test_resume_after_sigterm_reproduces_losses(tiny_brats_root, tmp_path, monkeypatch):
    from gazejax.engine import logs, trainer as train

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), epochs=2)
    full = str(tmp_path / "full")
    train.train_and_evaluate(cfg, full, methods.get(cfg.method_family))
    reference = _losses(full)
    assert len(reference) >= 4

    original = logs.ProgressBar.update

    def update_then_sigterm(self, n=1, **kw):
        original(self, n, **kw)
        if self.count == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = str(tmp_path / "interrupted")
    monkeypatch.setattr(train.ProgressBar, "update", update_then_sigterm)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(cfg, interrupted, methods.get(cfg.method_family))
    assert max(_losses(interrupted)) == 3
    monkeypatch.setattr(train.ProgressBar, "update", original)
    train.train_and_evaluate(cfg, interrupted, methods.get(cfg.method_family))  # the same command again: resumes at step 4
    resumed = _losses(interrupted)
    assert sorted(resumed) == sorted(reference)
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [reference[s] for s in sorted(reference)],
                               rtol=1e-6)
    assert os.path.exists(os.path.join(interrupted, "report.md"))


def test_one_vs_two_devices_same_losses(tiny_brats_root, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.getcwd()!r})
        import jax
        from gazejax import methods
        from gazejax.engine import parallel, trainer as train
        from tests.conftest import tiny_brats_config
        assert jax.device_count() == 2, jax.devices()
        out = {{}}
        for n in (1, 2):
            cfg = tiny_brats_config({tiny_brats_root!r}, {str(tmp_path / "cache")!r}, batch_size=2, num_devices=n, epochs=2)
            trainer = train.Trainer(cfg, {str(tmp_path)!r} + f"/run{{n}}", methods.get(cfg.method_family))
            data = trainer.method.make_data(cfg)
            stage = trainer.stages[0]
            variables = trainer.init_variables()
            tx = train._stage_tx(cfg, stage, 1, variables["params"])
            state = trainer.new_state(variables, tx)
            step = trainer.make_train_step(tx)
            it = trainer.train_iterator(data, stage, None)
            losses = []
            for _ in range(3):
                state, m = step(state, parallel.to_global(next(it), trainer.mesh))
                losses.append(float(m["loss"]))
            out[n] = losses
            trainer.close()
        print(json.dumps(out))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["1"], out["2"], rtol=2e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_brats_root, tmp_path, monkeypatch):
    from gazejax.engine import trainer as train
    from gazejax.data.brats import pipeline as brats_pipeline

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), epochs=3, eval_every_epochs=1)
    original, calls = brats_pipeline.make_train_example, []

    def poisoned(record, *args, **kw):  # from the third epoch on, inputs carry a NaN
        calls.append(1)
        example = original(record, *args, **kw)
        if len(calls) > 2 * n_train:
            example["image"][0, 0, 0, 0] = np.nan
        return example

    monkeypatch.setattr(brats_pipeline, "make_train_example", poisoned)
    workdir = str(tmp_path / "nan")
    trainer = train.Trainer(cfg, workdir, methods.get(cfg.method_family))
    n_train = trainer.method.make_data(cfg).num_train
    trainer.close()
    with pytest.raises(train.NonFiniteLossError, match="loss became nan"):
        train.train_and_evaluate(cfg, workdir, methods.get(cfg.method_family))
    losses = _losses(workdir)
    assert all(np.isfinite(v) for v in losses.values()) and max(losses) >= n_train
    assert not os.path.exists(os.path.join(workdir, "report.md"))
    # the last good checkpoint (end of an epoch before the NaN) is intact and usable
    monkeypatch.setattr(brats_pipeline, "make_train_example", original)
    results = train.evaluate_only(cfg, workdir, methods.get(cfg.method_family))
    assert np.isfinite(results["test"]["metrics"]["dice_WT"])
    assert os.path.exists(os.path.join(workdir, "report.md"))


def test_bfloat16_compute_keeps_float32_parameters_and_loss(tiny_brats_root, tmp_path):
    """`config.dtype=bfloat16` (linked to model.dtype): compute in bf16, parameters / optimiser state in float32."""
    import jax
    import jax.numpy as jnp

    from gazejax.engine import trainer as train

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), epochs=1)
    cfg.dtype = "bfloat16"
    assert cfg.model.dtype == "bfloat16"
    trainer = train.Trainer(cfg, str(tmp_path / "run"), methods.get(cfg.method_family))
    try:
        data = trainer.method.make_data(cfg)
        state = trainer.train(data)
    finally:
        trainer.close()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    losses = _losses(str(tmp_path / "run"))
    assert losses and all(np.isfinite(v) for v in losses.values())
    intermediates = trainer.model.apply({"params": state.params, **state.collections},
                                        np.zeros((1, 32, 32, 32, 4), np.float32), train=False,
                                        capture_intermediates=True, mutable=["intermediates"])[1]
    assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(intermediates)}
