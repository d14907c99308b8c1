"""gazejax.bench.convs: the EquiUnet layer list (against the model's own parameters) and the table's totals.
No timing assertions."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gazejax.bench import convs
from gazejax.models.unet3d import EquiUnet


def test_layers_are_equiunets_3x3x3_convolutions():
    """The benchmark's (C_in, C_out) per layer are exactly the 3x3x3 kernels of the model (shapes via eval_shape)."""
    variables = jax.eval_shape(lambda: EquiUnet(width=8).init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 4))))
    kernels = sorted(leaf.shape[-2:] for leaf in jax.tree.leaves(variables["params"])
                     if leaf.ndim == 5 and leaf.shape[:3] == (3, 3, 3))
    layers = convs.equiunet_layers(8, 16)
    assert sorted((c_in, c_out) for _, c_in, c_out, _ in layers) == kernels
    assert [side for side, *_ in layers[:8]] == [16, 16, 8, 8, 4, 4, 2, 2]
    assert [dil for *_, dil in layers] == [1] * 8 + [2, 2] + [1] * 7


def test_table_totals_and_ratio():
    rows = [{"layer": [8, 4, 8, 1], "mixed": {"fwd": 0.001, "dx": 0.002, "dw": 0.003},
             "torch": {"fwd": 0.001, "dx": 0.001, "dw": 0.001}},
            {"layer": [4, 8, 8, 2], "mixed": {"fwd": 0.001, "dx": 0.001, "dw": 0.001},
             "torch": {"fwd": 0.001, "dx": 0.001, "dw": 0.001}}]
    text = convs.table(rows, ["mixed"])
    assert "| 8^3, 4 -> 8, d1 | 1.0 / 2.0 / 3.0 | 1.0 / 1.0 / 1.0 |" in text
    assert "| **total** | 2 / 3 / 4 (sum 9) | 2 / 2 / 2 (sum 6) |" in text
    assert "mixed 1.50" in text
