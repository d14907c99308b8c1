"""Per-stage ReduceLROnPlateau (`Stage.plateau`): `optim.plateau_step` against hand-worked sequences of torch's
ReduceLROnPlateau semantics (patience, rel / abs threshold, cooldown, min_lr, eps, NaN), and the trainer on a toy
least-squares method whose gradients do not depend on data order: the learning rate drops exactly after the
expected validation, Adam's moments survive the drop (the weights match a hand-written optax loop and not one
that resets them), and a run stopped after the drop resumes with the reduced scale."""
from __future__ import annotations

import json
import math
import os
import signal

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gazejax.engine import optim
from gazejax.engine import trainer as train
from gazejax.engine.api import DataBundle, Method, Stage
from gazejax.engine.config_args import add_engine_fields

X = np.array([1.0, 2.0, 3.0], np.float32)  # every training example is (X, Y): gradients ignore the shuffle
Y = np.float32(10.0)
LR, STEPS_PER_EPOCH = 0.01, 8


def _state(mode="min"):
    tx = optim.scale_lr_on_plateau(lambda s: optax.sgd(s), lambda step: 1.0, mode=mode)
    return tx.init({"w": jnp.zeros(2)})


def _run(values, base_lr=1.0, mode="min", **settings):
    """Feeds `values` to plateau_step; returns the scale after each one."""
    state, scales = _state(mode), []
    for v in values:
        state, _ = optim.plateau_step(state, v, base_lr, mode=mode, **settings)
        scales.append(float(state.lr_scale))
    return scales, state


def test_patience_counts_evaluations_beyond_it():
    # torch docs: patience 2 ignores the first 2 bad epochs and drops after the 3rd
    scales, state = _run([1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], patience=2)
    assert scales == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    assert int(state.num_bad) == 0 and float(state.best) == pytest.approx(0.9)


def test_relative_threshold_1e4_mode_min_and_max():
    # 0.99995 is below best 1.0 but not by 1e-4 relative: a bad evaluation; 0.9998 is an improvement
    scales, state = _run([1.0, 0.99995, 0.99995], patience=1)
    assert scales == pytest.approx([1, 1, 0.1])
    scales, state = _run([1.0, 0.9998, 0.99975], patience=0)
    assert scales == pytest.approx([1, 1, 0.1]) and float(state.best) == pytest.approx(0.9998)
    scales, _ = _run([2.0, 2.0001, 2.0005, 1.0], mode="max", patience=0)  # 2.0001 < 2 * 1.0001
    assert scales == pytest.approx([1, 0.1, 0.1, 0.01])
    scales, _ = _run([2.0, 2.05, 2.2], mode="max", patience=0, threshold=0.1, threshold_mode="abs")
    assert scales == pytest.approx([1, 0.1, 0.1])


def test_cooldown_min_lr_eps_and_nan():
    scales, _ = _run([1.0, 2, 2, 2, 2, 2, 2], patience=0, cooldown=2)
    assert scales == pytest.approx([1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])  # two evaluations ignored after a drop
    scales, _ = _run([1.0, 2, 2, 2], base_lr=1e-3, patience=0, min_lr=5e-5)
    assert scales == pytest.approx([1, 0.1, 0.05, 0.05])  # lr 1e-4, then floored at 5e-5
    scales, _ = _run([1.0, 2], base_lr=1e-8, patience=0)  # the drop (9e-9) is not above eps 1e-8
    assert scales == [1.0, 1.0]
    scales, _ = _run([1.0, math.nan, math.nan], patience=1)
    assert scales == pytest.approx([1, 1, 0.1])
    with pytest.raises(ValueError, match="unknown setting"):
        optim.plateau_step(_state(), 1.0, 1.0, patient=3)


# ---------------------------------------------------------------------------------------------------- trainer
class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return {"y": nn.Dense(1, use_bias=False)(x)[:, 0]}


def _method(values: list[float], epochs: int = 6, plateau: dict | None = None) -> Method:
    calls = []

    def loss_fn(outputs, batch, params, config, stage=None):
        return ((outputs["y"] - batch["y"]) ** 2).mean(), {}

    def evaluate(predict, split, config, out_dir=None, stage=None):
        calls.append(1)
        score = values[min(len(calls), len(values)) - 1]
        return {"metrics": {"score": score}, "weights": predict(np.eye(3, dtype=np.float32))["y"]}

    def make_data(config, process_index=0, process_count=1):
        examples = [{"x": X, "y": Y}] * (STEPS_PER_EPOCH * config.batch_size)
        return DataBundle(train=grain.MapDataset.source(examples), num_train=len(examples),
                          splits={"val": 0, "test": 0})

    plateau = {"monitor": "val/score", "patience": 1} if plateau is None else plateau
    return Method(name="toy", build_model=lambda c: Linear(), init_batch=lambda c: {"x": np.zeros((2, 3), np.float32)},
                  loss_fn=loss_fn, make_data=make_data, evaluate=evaluate, report=lambda r, c, w: "",
                  stages=lambda c: [Stage("a", epochs=epochs, plateau=plateau)], model_inputs=lambda b: (b["x"],))


def _config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method_family, c.seed, c.batch_size, c.num_devices = "toy", 0, 8, 1
    c.eval_every_epochs, c.log_every_steps, c.monitor = 1, 1, ""
    c.optim = {"name": "adam", "lr": LR, "eps": 1e-8}
    c.model = {"init_from": ""}
    c.data = {"num_threads": 1, "prefetch": 1}
    add_engine_fields(c)
    c.checkpoint.async_save = False
    return c


def _expected_weights(w0: np.ndarray, steps: int, drop_after: int, reset_moments: bool = False) -> np.ndarray:
    """Adam by hand (optax.scale_by_adam), lr LR until step `drop_after`, LR / 10 after it."""
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    w = jnp.asarray(w0)
    grad = jax.grad(lambda w: (jnp.dot(jnp.asarray(X), w) - Y) ** 2)
    state = adam.init(w)
    for t in range(1, steps + 1):
        if reset_moments and t == drop_after + 1:
            state = adam.init(w)
        u, state = adam.update(grad(w), state)
        w = w - (LR if t <= drop_after else LR / 10) * u
    return np.asarray(w)


def _logged(workdir: str, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in rows if key in r}


def _initial_kernel(config, workdir: str) -> np.ndarray:
    trainer = train.Trainer(config, workdir, _method([1.0]))
    try:
        return np.asarray(trainer.init_variables()["params"]["Dense_0"]["kernel"])[:, 0]
    finally:
        trainer.close()


def test_trainer_drops_lr_after_patience_and_keeps_adam_moments(tmp_path):
    # validation scores 1.0, 0.5, 0.5, 0.5: patience 1 -> the 4th evaluation (step 32) is the second bad one
    cfg = _config()
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"), _method([1.0, 0.5, 0.5, 0.5, 0.4, 0.3]))
    scales = _logged(str(tmp_path / "run"), "train/lr_scale")
    assert sorted(scales) == list(range(1, 49))
    assert {s for s, v in scales.items() if v == pytest.approx(0.1)} == set(range(33, 49))
    assert all(v == 1.0 for s, v in scales.items() if s <= 32)
    w0 = _initial_kernel(cfg, str(tmp_path / "init"))
    got = results["test"]["weights"]
    np.testing.assert_allclose(got, _expected_weights(w0, 48, 32), rtol=2e-5, atol=1e-6)
    assert not np.allclose(got, _expected_weights(w0, 48, 32, reset_moments=True), rtol=1e-3, atol=1e-4)
    assert not np.allclose(got, _expected_weights(w0, 48, 48), rtol=1e-3, atol=1e-4)  # it did drop


def test_resume_after_the_drop_keeps_the_scale(tmp_path, monkeypatch):
    values = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]  # drop after evaluation 4 (step 32)
    full = str(tmp_path / "full")
    reference = train.train_and_evaluate(_config(), full, _method(values))["test"]["weights"]

    original = train.ProgressBar.update

    def update_then_sigterm(self, n=1, **kw):
        original(self, n, **kw)
        if self.count == 40:
            os.kill(os.getpid(), signal.SIGTERM)

    method, interrupted = _method(values), str(tmp_path / "interrupted")
    monkeypatch.setattr(train.ProgressBar, "update", update_then_sigterm)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(_config(), interrupted, method)
    monkeypatch.setattr(train.ProgressBar, "update", original)
    trainer = train.Trainer(_config(), interrupted, method)
    variables = trainer.init_variables()
    tx = train._stage_tx(_config(), trainer.stages[0], STEPS_PER_EPOCH, variables["params"])
    state, _, _ = trainer.ckpt.restore(40, train.abstract_like(trainer.new_state(variables, tx)))
    trainer.close()
    assert float(state.opt_state.lr_scale) == pytest.approx(0.1) and float(state.opt_state.best) == 0.5
    assert int(state.opt_state.num_bad) == 1  # evaluation 5 was bad again (counting restarted at the drop)
    resumed = train.train_and_evaluate(_config(), interrupted, method)["test"]["weights"]
    np.testing.assert_allclose(resumed, reference, rtol=1e-6)
    assert all(v == pytest.approx(0.1) for s, v in _logged(interrupted, "train/lr_scale").items() if s > 32)


def test_plateau_needs_a_known_monitor(tmp_path):
    with pytest.raises(ValueError, match="plateau needs a 'monitor'"):
        train.train_and_evaluate(_config(), str(tmp_path / "a"), _method([1.0], plateau={"patience": 1}))
    with pytest.raises(ValueError, match="plateau monitor 'val/loss' is not a validation metric"):
        train.train_and_evaluate(_config(), str(tmp_path / "b"), _method([1.0], epochs=1,
                                                                         plateau={"monitor": "val/loss"}))
