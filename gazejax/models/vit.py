"""Vision Transformer ViT-B/16 (Dosovitskiy et al. 2021), torchvision layout, Flax Linen, NHWC input.

Parameter names mirror torchvision's (`conv_proj`, `class_token`, `encoder/pos_embedding`,
`encoder/encoder_layer_0/{ln_1, self_attention/{in_proj, out_proj}, ln_2, mlp/{0, 3}}`, `encoder/ln`) with
torch's `encoder.layers.` level dropped, the fused `in_proj_weight` stored as a Dense `in_proj`, and the head
named `head` (torch `heads.head`); `from_torch` undoes these. `vit_b_16(num_classes=1000)` has exactly
torchvision's 86,567,656 parameters.

`__call__(x [B, S, S, in_channels], train=False, return_attention=False)` (S = `image_size`, fixed by the
positional embedding) returns `{"logits": [B, num_classes] or None, "features": {...}, "pooled": [B, D]}` with
N = (S / patch_size)**2 patches and features
- "embeddings":        [B, N + 1, D], class token + patch embeddings + positional embedding (block 0's input)
- "encoder_layer_<i>": [B, N + 1, D], the tokens after block i (i = 0 .. num_layers - 1), class token first
- "ln":                [B, N + 1, D], the final LayerNorm's output
- "patch_grid":        [B, S/p, S/p, D], the final normed patch tokens laid out on the patch grid
"pooled" is the normed class token (the head's input). With `return_attention=True` the result also holds
"attention": {"encoder_layer_<i>": [B, heads, N + 1, N + 1]} softmax weights per head (rows sum to 1).
"""
from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

from gazejax.models.backbone_utils import classifier_head, outputs, prepare_input
from gazejax.models.conv_impl import conv_general_dilated_for

_LN_EPS = 1e-6  # torchvision's ViT LayerNorm


class SelfAttention(nn.Module):
    """torch `nn.MultiheadAttention` (batch_first) as self-attention; returns (out [B, N, D], weights)."""

    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by num_heads {self.num_heads}")
        init = nn.initializers.xavier_uniform()
        in_proj = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=init, name="in_proj")
        q, k, v = jnp.split(in_proj(x), 3, axis=-1)  # torch in_proj rows are [q; k; v]
        q, k, v = (einops.rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in (q, k, v))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(dim / self.num_heads)
        weights = nn.softmax(logits, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(weights) if self.dropout > 0 else weights
        out = jnp.einsum("bhqk,bhkd->bhqd", attn.astype(v.dtype), v)
        out = einops.rearrange(out, "b h n d -> b n (h d)")
        out = nn.Dense(dim, dtype=self.dtype, kernel_init=init, name="out_proj")(out)
        return out, weights


class MLPBlock(nn.Module):
    """Linear "0" -> exact (erf) GELU -> dropout -> Linear "3" -> dropout, like torchvision's MLPBlock."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dim = x.shape[-1]
        init = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
        x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="0", **init)(x), approximate=False)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(dim, dtype=self.dtype, name="3", **init)(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(.)); returns (tokens, attention)."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        y = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name="ln_1")(x)
        y, weights = SelfAttention(self.num_heads, self.attention_dropout, self.dtype, name="self_attention")(
            y, train)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name="ln_2")(x)
        return x + MLPBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train), weights


class Encoder(nn.Module):
    """Positional embedding, `num_layers` EncoderBlocks ("encoder_layer_<i>") and the final LayerNorm "ln"."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, dict, dict]:
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:])  # BERT-style init
        x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(x.dtype))
        feats, attention = {"embeddings": x}, {}
        for i in range(self.num_layers):
            name = f"encoder_layer_{i}"
            x, attention[name] = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                                              self.dtype, name=name)(x, train)
            feats[name] = x
        x = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name="ln")(x)
        feats["ln"] = x
        return x, feats, attention


class VisionTransformer(nn.Module):
    """torchvision-compatible ViT classifier; see the module docstring for inputs and outputs.

    Attributes:
      image_size, patch_size: input side S and patch side p (S % p == 0); N = (S / p)**2 tokens + class token.
      num_layers, num_heads, hidden_dim, mlp_dim: transformer size (12, 12, 768, 3072 for B/16); small values
        give tiny test nets.
      dropout, attention_dropout: torchvision's (0, 0).
      num_classes: classes of the `head`; 0 = no head (logits None).
      in_channels / stem_mode: see backbone_utils.prepare_input (the stem is `conv_proj`).
      dtype: computation dtype (parameters stay float32).
      conv_impl: formulation of `conv_proj` (`gazejax.models.conv_impl.IMPLS`); parameters are the same whichever.
    """

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    stem_mode: str = "repeat"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # of the patch embedding (conv_impl.IMPLS)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_attention: bool = False) -> dict:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if x.ndim != 4 or x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected input [B, {self.image_size}, {self.image_size}, C], got {tuple(x.shape)}")
        x = prepare_input(x, self.in_channels, self.stem_mode, self.dtype)
        p = self.patch_size
        x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    kernel_init=nn.initializers.lecun_normal(),
                    conv_general_dilated=conv_general_dilated_for(self.conv_impl), name="conv_proj")(x)
        grid = x.shape[1]
        x = einops.rearrange(x, "b h w d -> b (h w) d")  # row-major patches, as torch's flatten(2)
        cls = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1])), x], axis=1)
        x, feats, attention = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout,
                                      self.attention_dropout, self.dtype, name="encoder")(x, train)
        feats["patch_grid"] = einops.rearrange(x[:, 1:], "b (h w) d -> b h w d", h=grid)
        pooled = x[:, 0]
        logits = classifier_head(pooled, self.num_classes, "head", self.dtype)
        result = outputs(logits, feats, pooled)
        if return_attention:
            result["attention"] = attention
        return result


def vit_b_16(**kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 px; 86,567,656 parameters with num_classes=1000."""
    return VisionTransformer(**kwargs)
