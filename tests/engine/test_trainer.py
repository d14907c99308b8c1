"""The trainer end to end on the toy least-squares method (tests/engine/toy.py): resume after SIGTERM reproduces the
uninterrupted losses and parameters, 1 device and 2 devices give the same losses, a NaN loss stops the run and keeps
the last good checkpoint (which evaluate_only then scores), bfloat16 compute keeps float32 parameters. The same run
on the real SAN+AAB network is tests/integration/test_san_aab.py (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gazejax.engine import checkpoint, trainer as train
from tests.conftest import resume_after_sigterm
from tests.engine import toy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "train/loss" in row:
                out[row["step"]] = row["train/loss"]
    return out


def _final_params(workdir: str, method, cfg) -> dict:
    """Parameters and collections of the run's best checkpoint, as numpy."""
    trainer = train.Trainer(cfg, workdir, method)
    try:
        state = trainer.stage_state(0, trainer.init_variables())
    finally:
        trainer.close()
    return jax.device_get({"params": state.params, **state.collections})


def test_resume_after_sigterm_reproduces_losses(tmp_path, monkeypatch):
    """Interrupted at step 3 of 16 and rerun: the same losses as one uninterrupted run, step for step, and the same
    final weights; BatchNorm statistics, the dropout RNG, Adam's moments and the data position (shuffle order and
    per-example augmentation noise) all come back from the checkpoint."""
    method = toy.make_method(epochs=2, batch_norm=True, dropout=0.25, noise=0.1)
    cfg = toy.config()
    full = str(tmp_path / "full")
    train.train_and_evaluate(cfg, full, method)
    reference = _losses(full)
    assert sorted(reference) == list(range(1, 17))  # 2 epochs x 64 // 8

    interrupted = str(tmp_path / "interrupted")
    resume_after_sigterm(monkeypatch, lambda w: train.train_and_evaluate(cfg, w, method), interrupted, 3, _losses,
                         reference)
    assert len(set(reference.values())) == len(reference)  # the losses move: equality is not that of constants
    want, got = _final_params(full, method, cfg), _final_params(interrupted, method, cfg)
    assert jax.tree.structure(want) == jax.tree.structure(got) and "batch_stats" in got
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    assert os.path.exists(os.path.join(interrupted, "report.md"))


_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax
    from gazejax.engine import trainer as train
    from tests.engine import toy
    assert jax.device_count() == 2, jax.devices()
    method = toy.make_method(epochs=2, batch_norm=True, dropout=0.25, noise=0.1)
    out = {{}}
    for n in (1, 2):
        workdir = {tmp!r} + f"/run{{n}}"
        results = train.train_and_evaluate(toy.config(num_devices=n), workdir, method)
        with open(workdir + "/metrics.jsonl") as f:
            losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
        out[n] = {{"losses": losses, "test": results["test"]["metrics"]["neg_mse"]}}
    print(json.dumps(out))
""")


def test_one_vs_two_devices_same_losses(tmp_path):
    """Global batch 8 on 1 device or split 4 + 4 over 2: the same losses (BatchNorm statistics are over the global
    batch, dropout masks do not depend on the sharding) and the same test score (5 examples: padded to 6)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    script = _TWO_DEVICES.format(repo=REPO, tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["1"]["losses"]) == 16
    np.testing.assert_allclose(out["2"]["losses"], out["1"]["losses"], rtol=2e-5)
    np.testing.assert_allclose(out["2"]["test"], out["1"]["test"], rtol=2e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """Inputs carry a NaN from the third epoch on: the run stops at its first step with NonFiniteLossError, logs only
    finite losses, keeps the end-of-epoch-2 checkpoint, writes no report; evaluate_only then scores that checkpoint."""
    method = toy.make_method(epochs=3, poison_after=2 * 64)
    cfg = toy.config()
    workdir = str(tmp_path / "nan")
    with pytest.raises(train.NonFiniteLossError, match=r"loss became nan at step 16 .*last good checkpoint: 16"):
        train.train_and_evaluate(cfg, workdir, method)
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, 17)) and all(np.isfinite(v) for v in losses.values())
    assert not os.path.exists(os.path.join(workdir, "report.md"))
    ckpt = checkpoint.Checkpointer(workdir, keep_last=2, async_save=False)
    assert ckpt.latest_step() == 16
    ckpt.close()
    results = train.evaluate_only(cfg, workdir, toy.make_method(epochs=3))
    assert np.isfinite(results["test"]["metrics"]["neg_mse"])
    assert results["test"]["metrics"]["neg_mse"] > -7.0  # trained for 2 epochs: the untrained error is ~|TARGET|^2 = 14
    assert os.path.exists(os.path.join(workdir, "report.md"))
    assert os.path.exists(os.path.join(workdir, "results.json"))


def test_evaluate_only_without_a_checkpoint_says_train_first(tmp_path, monkeypatch):
    made, init = [], train.Trainer.__init__
    monkeypatch.setattr(train.Trainer, "__init__", lambda self, *a: (init(self, *a), made.append(self))[0])
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*train first"):
        train.evaluate_only(toy.config(), str(tmp_path), toy.make_method())
    for trainer in made:  # evaluate_only raises without closing its trainer's log writer
        trainer.close()


def test_bfloat16_compute_keeps_float32_parameters_and_loss(tmp_path):
    """`config.dtype=bfloat16` (linked to model.dtype): compute in bf16, parameters / optimiser state in float32."""
    cfg = toy.config()
    cfg.dtype = "bfloat16"
    assert cfg.model.dtype == "bfloat16"
    method = toy.make_method(epochs=1, batch_norm=True)
    trainer = train.Trainer(cfg, str(tmp_path / "run"), method)
    try:
        state = trainer.train(method.make_data(cfg))
    finally:
        trainer.close()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
    losses = _losses(str(tmp_path / "run"))
    assert len(losses) == 8 and all(np.isfinite(v) for v in losses.values())
    intermediates = trainer.model.apply({"params": state.params, **state.collections}, np.ones((2, toy.DIM)),
                                        train=False, capture_intermediates=True, mutable=["intermediates"])[1]
    assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(intermediates)}


def test_run_json_counts_parameters_and_training_time_over_a_resume(tmp_path, monkeypatch):
    """run.json (the cost facts the leaderboards read, apart from the reproducible results.json): the parameter count
    of the evaluated weights and the training wall time, summed over the run that was stopped and its resumption."""
    import time

    from tests.conftest import sigterm_at_step

    method = toy.make_method(epochs=2, batch_norm=True)
    cfg = toy.config()
    original = train.Trainer.make_train_step

    pause = {"s": 0.5}  # seconds each step sleeps: a lower bound of the time before the stop

    def slow_step(self, *a, **k):
        step = original(self, *a, **k)
        return lambda state, batch: (time.sleep(pause["s"]), step(state, batch))[1]

    monkeypatch.setattr(train.Trainer, "make_train_step", slow_step)
    workdir = str(tmp_path / "run")
    update = sigterm_at_step(monkeypatch, 5)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(cfg, workdir, method)
    ckpt = checkpoint.Checkpointer(workdir, keep_last=2, async_save=False)
    before = ckpt.restore_meta(ckpt.latest_step())["train_seconds"]
    ckpt.close()
    assert before >= 5 * 0.5
    monkeypatch.setattr(train.ProgressBar, "update", update)
    pause["s"] = 0.0
    started = time.perf_counter()
    train.train_and_evaluate(cfg, workdir, method)
    resumed = time.perf_counter() - started
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["params"] == toy.DIM + 2 * toy.DIM  # Dense kernel [3, 1] + BatchNorm scale and bias [3] each
    assert before < run["train_seconds"] <= before + resumed  # the time before SIGTERM counts too
    assert "run" not in json.load(open(os.path.join(workdir, "results.json")))


@pytest.mark.parametrize("impl, want", [("onednn", "onednn"), ("xla", None), ("auto", "auto")])
def test_every_jit_tracing_the_model_gets_the_conv_impl_compiler_options(tmp_path, monkeypatch, impl, want):
    """The model's init, the train step, the state check and the predictor are compiled with
    `conv_impl.compiler_options(model.conv_impl)` (XLA:CPU's oneDNN convolutions under "onednn"), none with "xla"."""
    from gazejax.models import conv_impl

    seen = []
    real_jit = jax.jit

    def spy(fun, *args, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real_jit(fun, *args, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    cfg = toy.config(**{"model.conv_impl": impl})
    trainer = train.Trainer(cfg, str(tmp_path / "run"), toy.make_method())
    try:
        trainer.init_variables()
        trainer.make_train_step(optax.adam(1e-3))
    finally:
        trainer.close()
    expected = conv_impl.compiler_options(want) if want else {}
    assert len(seen) >= 4 and all(o == expected for o in seen), seen
    assert (expected == conv_impl.ONEDNN_OPTIONS) == (conv_impl.resolve(impl) == "onednn")
