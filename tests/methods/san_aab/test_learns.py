"""The real SAN+AAB network learns: 25 Adam steps on one tiny synthetic BraTS batch cut the loss by over 30 % (slow:
it compiles the full train step; the method's one end-to-end run is tests/integration/test_san_aab.py)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from gazejax import methods
from tests.conftest import tiny_brats_config

pytestmark = pytest.mark.slow


def test_loss_decreases_on_a_tiny_synthetic_batch(tiny_brats_root, tmp_path, fast_compile):
    from gazejax.engine import parallel, trainer as train

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), **{"optim.name": "adam", "optim.lr": 1e-2})
    trainer = train.Trainer(cfg, str(tmp_path / "run"), methods.get(cfg.method_family))
    data = trainer.method.make_data(cfg)
    example = data.augment(data.train[0], np.random.default_rng(0))
    batch = parallel.to_global(jax.tree.map(lambda x: np.asarray(x)[None], example), trainer.mesh)
    variables = trainer.init_variables()
    tx = train._stage_tx(cfg, trainer.stages[0], 100, variables["params"])
    state, step = trainer.new_state(variables, tx), trainer.make_train_step(tx)
    first = None
    for _ in range(25):
        state, m = step(state, batch)
        first = first if first is not None else float(m["loss"])
    trainer.close()
    assert float(m["loss"]) < 0.7 * first, (first, float(m["loss"]))
