"""`Stage.frozen` on a toy two-part model with BatchNorm: a frozen sub-tree keeps its parameters and its
batch_stats bit-identical through the stage (even under `trainable=("*",)`), the model receives
`Method.apply_kwargs(stage)` and runs the frozen part in inference mode (the logged loss equals the loss with that
part normalised by its running statistics), the unfrozen part keeps training and updating its statistics, a model
that ignores the switch gets a warning and its frozen statistics are still kept, and a pattern that matches
nothing is an error."""
from __future__ import annotations

import json
import logging
import os

import flax.linen as nn
import grain
import jax
import ml_collections
import numpy as np
import pytest

from gazejax.engine import trainer as train
from gazejax.engine.api import DataBundle, Method, Stage
from gazejax.engine.config_args import add_engine_fields

N, BATCH = 16, 16  # one step per epoch, the whole set in every batch


class Part(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(4)(x))


class TwoParts(nn.Module):
    honour_switch: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False, inference: tuple[str, ...] = ()):
        frozen_encoder = "encoder" in inference and self.honour_switch
        h = Part(name="encoder")(x, train and not frozen_encoder)
        return {"y": Part(name="head")(nn.relu(h), train)[:, 0]}


def _examples():
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=3).astype(np.float32) * 2 + 1, "y": np.float32(rng.normal())} for _ in range(N)]


def _loss(out, batch, params, config, stage=None):
    return ((out["y"] - batch["y"]) ** 2).mean(), {}


def _method(frozen=("encoder/*",), honour_switch=True, seen=None) -> Method:
    def apply_kwargs(stage):
        kwargs = {"inference": ("encoder",)} if stage is not None and stage.frozen else {}
        if seen is not None:
            seen.append((None if stage is None else stage.name, kwargs))
        return kwargs

    def make_data(config, process_index=0, process_count=1):
        return DataBundle(train=grain.MapDataset.source(_examples()), num_train=N, splits={})

    return Method(name="toy", build_model=lambda c: TwoParts(honour_switch),
                  init_batch=lambda c: {"x": np.zeros((2, 3), np.float32)}, loss_fn=_loss, make_data=make_data,
                  evaluate=lambda *a, **k: {"metrics": {}}, report=lambda r, c, w: "",
                  stages=lambda c: [Stage("a", epochs=3), Stage("b", epochs=3, frozen=tuple(frozen))],
                  model_inputs=lambda b: (b["x"],), apply_kwargs=apply_kwargs)


def _config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method_family, c.seed, c.batch_size, c.num_devices = "toy", 0, BATCH, 1
    c.eval_every_epochs, c.log_every_steps, c.monitor = 1, 1, ""
    c.optim = {"name": "adam", "lr": 0.05}
    c.model = {"init_from": ""}
    c.data = {"num_threads": 1, "prefetch": 1}
    add_engine_fields(c)
    c.checkpoint.async_save, c.checkpoint.keep = False, 10
    return c


def _states(workdir: str, method: Method):
    """Variables (params + collections) of every checkpoint by step, and the first logged loss of stage b."""
    trainer = train.Trainer(_config(), workdir, method)
    variables = trainer.init_variables()
    out = {}
    for step in trainer.ckpt.manager.all_steps():
        stage = trainer.stages[trainer.ckpt.restore_meta(step)["stage"]]
        tx = train._stage_tx(trainer.config, stage, 1, variables["params"])
        state = trainer.ckpt.restore(step, train.abstract_like(trainer.new_state(variables, tx)))[0]
        out[step] = jax.tree.map(np.asarray, {"params": state.params, **state.collections})
    trainer.close()
    return out


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _loss_at(workdir: str, step: int) -> float:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return next(r["train/loss"] for r in rows if r["step"] == step and "train/loss" in r)


def test_frozen_subtree_keeps_params_and_statistics_and_runs_in_inference_mode(tmp_path):
    seen: list = []
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(_config(), workdir, _method(seen=seen))
    assert ("a", {}) in seen and ("b", {"inference": ("encoder",)}) in seen
    states = _states(workdir, _method())
    end_a, end_b = states[3], states[6]
    for part in ("encoder",):
        assert _equal(end_a["params"][part], end_b["params"][part])
        assert _equal(end_a["batch_stats"][part], end_b["batch_stats"][part])
    assert not _equal(end_a["params"]["head"], end_b["params"]["head"])
    assert not _equal(end_a["batch_stats"]["head"], end_b["batch_stats"]["head"])
    # stage a did move the encoder's statistics away from their (0, 1) start, so "kept" is not trivially true
    assert not np.allclose(end_a["batch_stats"]["encoder"]["BatchNorm_0"]["mean"], 0.0)

    # the first step of stage b: encoder on its running statistics, head on batch statistics
    batch = {k: np.stack([e[k] for e in _examples()]) for k in ("x", "y")}
    model = TwoParts()
    out = model.apply(end_a, batch["x"], train=True, inference=("encoder",), mutable=["batch_stats"])[0]
    want = float(_loss(out, batch, None, None)[0])
    assert _loss_at(workdir, 4) == pytest.approx(want, rel=1e-5)
    all_train = model.apply(end_a, batch["x"], train=True, mutable=["batch_stats"])[0]
    assert float(_loss(all_train, batch, None, None)[0]) != pytest.approx(want, rel=1e-3)


def test_frozen_wins_over_trainable_and_a_model_ignoring_the_switch_is_warned(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        train.train_and_evaluate(_config(), workdir, _method(honour_switch=False))
    assert "changed collection values under frozen ('encoder/*',)" in caplog.text
    states = _states(workdir, _method(honour_switch=False))
    assert _equal(states[3]["params"]["encoder"], states[6]["params"]["encoder"])
    assert _equal(states[3]["batch_stats"]["encoder"], states[6]["batch_stats"]["encoder"])


def test_a_frozen_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="frozen pattern 'encodr/\\*' matches no parameter or collection leaf"):
        train.train_and_evaluate(_config(), str(tmp_path / "run"), _method(frozen=("encodr/*",)))
