"""A toy `Method` for trainer tests: least squares y = x . TARGET on a few dozen 3-vectors, compiled in well under a
second, so the trainer's behaviour (resume, NaN stop, dtypes, devices, data iterator) is tested without a real model.

Options add the pieces whose handling the trainer owes: `batch_norm` (a mutable collection, batch-coupled across
devices), `dropout` (the step RNG), `noise` (an augmentation seeded per example), `poison_after` (a NaN input after
that many augmented examples). `evaluate` reports the squared error and reads the weights back through `predict`.
"""
from __future__ import annotations

import os
import threading

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from gazejax.engine.api import DataBundle, Method, Stage
from gazejax.engine.config_args import add_engine_fields
from tests.conftest import apply_overrides

DIM = 3
TARGET = np.arange(1, DIM + 1, dtype=np.float32)
PROBE = np.eye(DIM, dtype=np.float32)  # predict(PROBE)["y"] reads the Dense kernel back (no batch_norm, no bias)


class ToyModel(nn.Module):
    """[B, DIM] -> {"y": [B]}: optional BatchNorm and dropout in front of a bias-free Dense(1)."""

    dtype: str = "float32"
    batch_norm: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        dtype = jnp.dtype(self.dtype)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5, dtype=dtype)(x)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return {"y": nn.Dense(1, use_bias=False, dtype=dtype)(x)[:, 0]}


def examples(n: int, seed: int) -> list[dict]:
    """n examples {"x": [DIM], "y": x . TARGET} drawn with `seed`."""
    xs = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return [{"x": x, "y": np.float32(x @ TARGET)} for x in xs]


def _stack(items: list[dict]) -> dict:
    return {k: np.stack([e[k] for e in items]) for k in items[0]}


class Augment:
    """Adds N(0, noise^2) to x with the trainer's per-example generator; from the `poison_after`-th call on (counted
    in this process) x holds a NaN. A class, not a closure: Grain worker processes receive it pickled."""

    def __init__(self, noise: float, poison_after: int | None):
        self.noise, self.poison_after, self.calls = noise, poison_after, 0
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"noise": self.noise, "poison_after": self.poison_after, "calls": self.calls}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        with self._lock:
            self.calls += 1
            poison = self.poison_after is not None and self.calls > self.poison_after
        x = example["x"] + self.noise * rng.normal(size=DIM).astype(np.float32)
        if poison:
            x = x.copy()
            x[0] = np.nan
        return {"x": x, "y": example["y"]}


def make_method(epochs: int = 2, n_train: int = 64, n_eval: int = 5, batch_norm: bool = False, dropout: float = 0.0,
                noise: float = 0.0, poison_after: int | None = None, stages=None) -> Method:
    """The toy method; `stages(config)` defaults to one stage "fit" of `epochs` epochs monitoring val/neg_mse."""
    import grain

    def make_data(config, process_index=0, process_count=1):
        train = examples(n_train, seed=1)
        aug = Augment(noise, poison_after) if noise or poison_after is not None else None
        return DataBundle(train=grain.MapDataset.source(train), num_train=len(train), augment=aug,
                          splits={"val": _stack(examples(n_eval, seed=2)), "test": _stack(examples(n_eval, seed=3))},
                          info={"n_train": len(train)})

    def loss_fn(outputs, batch, params, config, stage=None):
        err = outputs["y"].astype(jnp.float32) - batch["y"]
        return (err ** 2).mean(), {"abs_err": jnp.abs(err).mean()}

    def evaluate(predict, split, config, out_dir=None, stage=None):
        mse = float(np.mean((predict(split["x"])["y"].astype(np.float32) - split["y"]) ** 2))
        weights = predict(PROBE)["y"].astype(np.float32)
        return {"metrics": {"neg_mse": -mse}, "weights": weights}

    def report(results, config, workdir):
        path = os.path.join(workdir, "report.md")
        with open(path, "w") as f:
            f.write(f"test neg_mse: {results['test']['metrics']['neg_mse']}\n")
        return path

    return Method(name="toy", build_model=lambda c: ToyModel(c.model.dtype, batch_norm, dropout),
                  init_batch=lambda c: {"x": np.zeros((2, DIM), np.float32)}, loss_fn=loss_fn, make_data=make_data,
                  evaluate=evaluate, report=report,
                  stages=stages or (lambda c: [Stage("fit", epochs=epochs, monitor="val/neg_mse")]),
                  model_inputs=lambda batch: (batch["x"],))


def config(**overrides) -> ml_collections.ConfigDict:
    """The engine fields a run needs; batch 8, Adam lr 0.05, evaluation and a checkpoint every epoch, synchronous
    saves. `overrides` are dotted keys ("data.num_workers": 2)."""
    c = ml_collections.ConfigDict()
    c.method_family, c.seed, c.batch_size, c.num_devices = "toy", 0, 8, 1
    c.eval_every_epochs, c.log_every_steps, c.monitor = 1, 1, ""
    c.optim = {"name": "adam", "lr": 0.05}
    c.model = {"init_from": "", "dtype": "float32"}
    c.data = {"num_threads": 1, "prefetch": 1}
    add_engine_fields(c)
    c.checkpoint.async_save = False
    return apply_overrides(c, overrides)
