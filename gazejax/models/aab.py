"""Auxiliary Attention Block (AAB, Huang et al. BMVC 2021, Sec. 3.2): SAN's feature M2 queries the backbone's
deepest feature E4 with multi-head attention (Eq. 1-2); the refined feature M' is added back, E4' = E4 + M'.

N-d and channels-last: `[B, D, H, W, C]` for BraTS and the same class on `[B, H, W, C]` (2D chest X-rays).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gazejax.models.layers import max_pool, upsample_nearest

Dtype = Any


def positional_encoding(shape: Sequence[int]) -> np.ndarray:
    """Fixed positional encoding `[*shape, len(shape)]`, float32 (Sec. 3.2, Huang et al.).

    Channel a at index i_a is (2 i_a - N_a + 1) / (N_a - 1), i.e. N_a evenly spaced values from -1 to 1 along
    spatial axis a; an axis of length 1 gets 0 (its formula would divide by zero). For the paper's 3D grid
    (D, W, H) this is P_ijk = ((2i-D+1)/(D-1), (2j-W+1)/(W-1), (2k-H+1)/(H-1)).
    """
    axes = [
        (2.0 * np.arange(n) - n + 1) / (n - 1) if n > 1 else np.zeros(1) for n in (int(s) for s in shape)
    ]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack(grids, axis=-1).astype(np.float32)


def _pool_factors(fine: tuple[int, ...], coarse: tuple[int, ...], what: str) -> tuple[int, ...]:
    if any(f % c for f, c in zip(fine, coarse)):
        raise ValueError(f"aab.py: {what} grid {fine} is not an integer multiple of the attention grid {coarse}")
    return tuple(f // c for f, c in zip(fine, coarse))


class AAB(nn.Module):
    """AAB `(e4 [B, *S_e, C_e], m2 [B, *S_m, C_m]) -> e4' [B, *S_e, C_e]`.

    Attention grid S_a = elementwise min(S_e, S_m): E4 is max-pooled to it (factor S_e/S_a, 2 for BraTS where
    E4 is 16^3 and M2 8^3); if M2's grid is finer (possible with 2D backbones), M2 is max-pooled instead.
    P = `positional_encoding` of S_a is concatenated to E4^ds channels; in 2D the grid is taken as (1, H, W),
    the paper's D = 1 case, so P keeps 3 channels with a constant-0 first coordinate. Tokens (flattened S_a):
      Q = Dense(heads*head_dim)(M2),  K = Dense(...)([E4^ds, P]),  V = Dense(...)([E4^ds, P])
      A = Concat_h(softmax(Q_h K_h^T / sqrt(s)) V_h) W^O        (Eq. 1-2, W^O: -> C_e)
      x = LayerNorm(A);  M' = LayerNorm(x + FFN(x)),  FFN = Dense(ffn_mult*C_e) -> ReLU -> Dense(C_e)
    (post-norm as DETR [Carion et al.], which the paper's Fig. 2 follows; no residual from the query since M2
    and E4 have different widths). M' is reshaped to S_a, up-sampled to S_e by nearest repetition (each E4
    voxel receives the token of the pooling cell it fell into) and added: E4' = E4 + M'.
    The paper's Q, K, V are (dwh) x c_h with c_h = 64, i.e. heads * head_dim = 64 in all (4 x 16 in the BraTS
    paper preset), and Eq. 1 divides by sqrt(c_h): `scale_dim` = s, with 0 meaning head_dim (Vaswani et al.'s
    per-head sqrt(d_k), torch's nn.MultiheadAttention); set it to heads * head_dim for Eq. 1 read literally.
    """

    num_heads: int = 4
    head_dim: int = 64
    ffn_mult: int = 2
    dtype: Dtype = jnp.float32
    scale_dim: int = 0  # Eq. 1 divides Q K^T by sqrt(scale_dim); 0 = head_dim (per-head scaling)

    @nn.compact
    def __call__(self, e4: jax.Array, m2: jax.Array, train: bool = False) -> jax.Array:
        del train
        if e4.ndim not in (4, 5) or m2.ndim != e4.ndim or m2.shape[0] != e4.shape[0]:
            raise ValueError(f"aab.py: expected e4, m2 as [B, (D,) H, W, C] with equal B, got {e4.shape}, {m2.shape}")
        grid_e, grid_m = e4.shape[1:-1], m2.shape[1:-1]
        grid = tuple(min(a, b) for a, b in zip(grid_e, grid_m))
        factor_e = _pool_factors(grid_e, grid, "E4")
        e4_ds = max_pool(e4, factor_e)
        m2_ds = max_pool(m2, _pool_factors(grid_m, grid, "M2"))
        channels = e4.shape[-1]

        pos = positional_encoding(grid if len(grid) == 3 else (1, *grid))
        pos = jnp.broadcast_to(jnp.asarray(pos.reshape(-1, 3), e4.dtype), (e4.shape[0], int(np.prod(grid)), 3))
        kv_tokens = jnp.concatenate([_tokens(e4_ds), pos], axis=-1)
        attended = self._attention(_tokens(m2_ds), kv_tokens, channels)
        x = self._norm("norm1")(attended)
        ffn = self._dense(channels, "ffn2")(nn.relu(self._dense(self.ffn_mult * channels, "ffn1")(x)))
        x = self._norm("norm2")(x + ffn)

        refined = x.reshape(e4.shape[0], *grid, channels)
        refined = upsample_nearest(refined, factor_e).astype(e4.dtype)
        chex.assert_equal_shape([refined, e4])
        return e4 + refined

    def _attention(self, q_tokens: jax.Array, kv_tokens: jax.Array, channels: int) -> jax.Array:
        """Eq. 1-2: multi-head softmax(Q K^T / sqrt(c_h)) V, heads concatenated then W^O, `[B, T, C_e]`."""
        features = self.num_heads * self.head_dim

        def project(tokens: jax.Array, name: str) -> jax.Array:
            return einops.rearrange(self._dense(features, name)(tokens), "b t (h d) -> b t h d", h=self.num_heads)

        q, k, v = project(q_tokens, "query"), project(kv_tokens, "key"), project(kv_tokens, "value")
        if self.scale_dim < 0:
            raise ValueError(f"aab.py: scale_dim must be >= 0 (0 = head_dim), got {self.scale_dim}")
        scale = 1.0 / np.sqrt(self.scale_dim or self.head_dim)
        heads = jax.nn.dot_product_attention(q, k, v, scale=scale)  # Eq. 1
        concat = einops.rearrange(heads, "b t h d -> b t (h d)")
        return self._dense(channels, "out")(concat)  # Eq. 2, W^O

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name)

    def _norm(self, name: str) -> nn.LayerNorm:
        # eps 1e-5 as torch's LayerNorm
        return nn.LayerNorm(1e-5, dtype=self.dtype, param_dtype=jnp.float32, name=name)


def _tokens(x: jax.Array) -> jax.Array:
    """`[B, *S, C] -> [B, prod(S), C]` (row-major over the spatial axes, as `positional_encoding`)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])
