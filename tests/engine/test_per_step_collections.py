"""`Method.per_step_collections` under gradient accumulation: a collection named there advances once per optimiser
step (an EMA with momentum m moves by m per step, not m^k), the others once per micro-batch (k times per step),
and with k = 1 both are the same. A toy model counts its updates and keeps an EMA of a frozen (lr 0) kernel, whose
value after S steps is (1 - m^S) * kernel from a zero start."""
from __future__ import annotations

import flax.linen as nn
import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gazejax.engine import trainer as train
from gazejax.engine.api import DataBundle, Method, Stage
from gazejax.engine.config_args import add_engine_fields

M = 0.9
STEPS = 3  # 24 examples, batch 8, one epoch


class Counting(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        dense = nn.Dense(1, use_bias=False)
        y = dense(x)[:, 0]
        kernel = dense.variables["params"]["kernel"]
        per_step = self.variable("momentum", "updates", lambda: jnp.zeros((), jnp.int32))
        ema = self.variable("momentum", "ema", lambda: jnp.zeros_like(kernel))
        sequential = self.variable("queue", "updates", lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            per_step.value = per_step.value + 1
            ema.value = M * ema.value + (1 - M) * kernel
            sequential.value = sequential.value + 1
        return {"y": y}


def _method(per_step: tuple[str, ...]) -> Method:
    def make_data(config, process_index=0, process_count=1):
        rng = np.random.default_rng(0)
        examples = [{"x": rng.normal(size=3).astype(np.float32), "y": np.float32(1.0)} for _ in range(24)]
        return DataBundle(train=grain.MapDataset.source(examples), num_train=24, splits={})

    return Method(name="toy", build_model=lambda c: Counting(),
                  init_batch=lambda c: {"x": np.zeros((2, 3), np.float32)},
                  loss_fn=lambda out, batch, params, config, stage=None: (((out["y"] - batch["y"]) ** 2).mean(), {}),
                  make_data=make_data, evaluate=lambda *a, **k: {"metrics": {}}, report=lambda r, c, w: "",
                  stages=lambda c: [Stage("a", epochs=1, optimizer={"lr": 0.0})], model_inputs=lambda b: (b["x"],),
                  per_step_collections=per_step)


def _config(accum: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method_family, c.seed, c.batch_size, c.num_devices = "toy", 0, 8, 1
    c.eval_every_epochs, c.log_every_steps, c.monitor = 1, 1, ""
    c.optim = {"name": "adam", "lr": 0.0}
    c.model = {"init_from": ""}
    c.data = {"num_threads": 1, "prefetch": 1}
    add_engine_fields(c)
    c.grad_accum_steps = accum
    c.checkpoint.async_save = False
    return c


def _collections(tmp_path, accum: int, per_step: tuple[str, ...]):
    trainer = train.Trainer(_config(accum), str(tmp_path / f"k{accum}_{'_'.join(per_step)}"), _method(per_step))
    try:
        state = trainer.train(trainer.method.make_data(trainer.config))
        kernel = np.asarray(state.params["Dense_0"]["kernel"])
        return {k: np.asarray(v) for k, v in state.collections["momentum"].items()}, \
            int(state.collections["queue"]["updates"]), kernel
    finally:
        trainer.close()


@pytest.mark.parametrize("accum", [1, 4])
def test_per_step_collection_advances_once_per_step(tmp_path, accum):
    momentum, queue_updates, kernel = _collections(tmp_path, accum, ("momentum",))
    assert int(momentum["updates"]) == STEPS
    assert queue_updates == STEPS * accum  # the other collection still advances per micro-batch
    np.testing.assert_allclose(momentum["ema"], (1 - M ** STEPS) * kernel, rtol=1e-6)


def test_without_it_the_ema_runs_k_times_per_step(tmp_path):
    momentum, queue_updates, kernel = _collections(tmp_path, 4, ())
    assert int(momentum["updates"]) == 4 * STEPS and queue_updates == 4 * STEPS
    np.testing.assert_allclose(momentum["ema"], (1 - M ** (4 * STEPS)) * kernel, rtol=1e-6)


def test_a_name_the_model_lacks_is_ignored(tmp_path):
    """A method family declares its momentum encoder's collection once; baselines without one train as before."""
    momentum, queue_updates, _ = _collections(tmp_path, 4, ("target",))
    assert int(momentum["updates"]) == 4 * STEPS and queue_updates == 4 * STEPS
