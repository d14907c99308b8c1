"""Tests of the torchvision-compatible 2D backbones: exact parameter counts, 1-channel stems, outputs, BN semantics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.models import build

# torchvision 0.29 `sum(p.numel() for p in model.parameters())` with num_classes=1000 (also the "num_params" of
# the torchvision weight docs); head sizes are (features + 1) * 1000.
TORCHVISION_PARAMS = {
    "resnet18": (11_689_512, 512),
    "resnet50": (25_557_032, 2048),
    "densenet201": (20_013_928, 1920),
    "efficientnet_b0": (5_288_548, 1280),
    "efficientnet_v2_s": (21_458_488, 1280),
    "mobilenet_v2": (3_504_872, 1280),
    "vit_b_16": (86_567_656, 768),
}
# Tiny variants (eval_shape only) for the stem tests: (name, kwargs, input side, stem kernel path).
TINY = {
    "resnet18": ({"width": 8}, 32, ("conv1",)),
    "resnet50": ({"width": 8, "stage_sizes": (1, 1, 1, 1)}, 32, ("conv1",)),
    "densenet201": ({"growth_rate": 4, "block_config": (1, 1, 1, 1), "num_init_features": 8}, 32,
                    ("features", "conv0")),
    "efficientnet_b0": ({"width_mult": 0.25, "depth_mult": 0.25}, 32, ("features", "0", "0")),
    "efficientnet_v2_s": ({"width_mult": 0.25, "depth_mult": 0.25}, 32, ("features", "0", "0")),
    "mobilenet_v2": ({"width_mult": 0.25}, 32, ("features", "0", "0")),
    "vit_b_16": ({"image_size": 32, "patch_size": 8, "hidden_dim": 16, "mlp_dim": 32, "num_layers": 1,
                  "num_heads": 2}, 32, ("conv_proj",)),
}


def _shapes(name: str, side: int, channels: int = 3, **kwargs):
    """(output shapes, variable shapes, input spec) of build(name, **kwargs) via one eval_shape (no compile)."""
    model = build(name, **kwargs)
    x = jax.ShapeDtypeStruct((2, side, side, channels), jnp.float32)
    out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
    return out, variables, x


def _init_key() -> jax.Array:
    # XLA:CPU compiles threefry-based initialisers very slowly (~30 s for a tiny ResNet); rbg takes ~4 s.
    return jax.random.key(0, impl="rbg")


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# Feature channels per key at 64x64 input for the nets whose features are named by stride.
FEATURES = {
    "efficientnet_b0": {"stride2": 16, "stride4": 24, "stride8": 40, "stride16": 112, "stride32": 320,
                        "final_conv": 1280},
    "efficientnet_v2_s": {"stride2": 24, "stride4": 48, "stride8": 64, "stride16": 160, "stride32": 256,
                          "final_conv": 1280},
    "mobilenet_v2": {"stride2": 16, "stride4": 24, "stride8": 32, "stride16": 96, "stride32": 320,
                     "final_conv": 1280},
    "densenet201": {"stem": 64, "denseblock1": 256, "transition1": 128, "denseblock2": 512, "transition2": 256,
                    "denseblock3": 1792, "transition3": 896, "denseblock4": 1920, "norm5": 1920},
    "resnet50": {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
}
STRIDES = {"stem": 2, "denseblock1": 4, "transition1": 8, "denseblock2": 8, "transition2": 16, "denseblock3": 16,
           "transition3": 32, "denseblock4": 32, "norm5": 32, "final_conv": 32, "layer1": 4, "layer2": 8,
           "layer3": 16, "layer4": 32}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_and_outputs_match_torchvision(name):
    expected, head_in = TORCHVISION_PARAMS[name]
    side = 224 if name == "vit_b_16" else 64
    out, variables, _ = _shapes(name, side, num_classes=1000)
    assert _count(variables["params"]) == expected
    assert out["logits"].shape == (2, 1000) and out["pooled"].shape == (2, head_in)
    for key, channels in FEATURES.get(name, {}).items():
        s = STRIDES.get(key) or int(key.removeprefix("stride"))
        assert out["features"][key].shape == (2, side // s, side // s, channels), key
    if name in FEATURES:
        assert set(out["features"]) == set(FEATURES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("mode", ["repeat", "adapt"])
def test_one_channel_stem(name, mode):
    kwargs, side, stem = TINY[name]
    out, variables, _ = _shapes(name, side, channels=1, in_channels=1, stem_mode=mode, num_classes=5, **kwargs)
    kernel = variables["params"]
    for part in stem:
        kernel = kernel[part]
    assert kernel["kernel"].shape[-2] == (3 if mode == "repeat" else 1)
    assert out["logits"].shape == (2, 5)
    # num_classes=0 removes exactly the head: Linear(C, 5) where C is the pooled width.
    headless_out, headless, _ = _shapes(name, side, channels=1, in_channels=1, stem_mode=mode, num_classes=0,
                                        **kwargs)
    assert headless_out["logits"] is None
    assert _count(variables["params"]) - _count(headless["params"]) == (out["pooled"].shape[1] + 1) * 5


def test_wrong_channels_and_mode_are_clear_errors():
    model = build("resnet18", num_classes=0, width=8)
    with pytest.raises(ValueError, match=r"expected input \[B, H, W, 3\]"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="stem_mode"):
        jax.eval_shape(build("resnet18", stem_mode="tile").init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.slow
def test_tiny_resnet_forward_features_and_torch_batchnorm_momentum():
    model = build("resnet18", num_classes=3, width=4, stage_sizes=(1, 1, 1, 1))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jax.jit(model.init)(_init_key(), x)

    @jax.jit
    def run(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"]), model.apply(v, x)

    (out, updates), eval_out = run(variables, x)
    shapes = {k: v.shape for k, v in out["features"].items()}
    assert shapes == {"stem": (2, 16, 16, 4), "layer1": (2, 8, 8, 4), "layer2": (2, 4, 4, 8),
                      "layer3": (2, 2, 2, 16), "layer4": (2, 1, 1, 32)}
    assert out["logits"].shape == (2, 3) and out["pooled"].shape == (2, 32)
    np.testing.assert_allclose(out["pooled"], out["features"]["layer4"][:, 0, 0], rtol=1e-6)
    # torch momentum 0.1: running_mean = 0.9 * 0 + 0.1 * batch mean of conv1(x) (7x7, stride 2, padding 3).
    kernel = variables["params"]["conv1"]["kernel"]
    conv1 = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    # Eval mode uses the running statistics: a zero-mean unit-variance BN is the identity on stem features.
    np.testing.assert_allclose(eval_out["features"]["stem"], jnp.maximum(conv1 / np.sqrt(1 + 1e-5), 0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tiny_vit_attention_outputs():
    kwargs, side, _ = TINY["vit_b_16"]
    model = build("vit_b_16", num_classes=4, **{**kwargs, "num_layers": 2})
    x = jax.random.uniform(jax.random.key(2), (1, side, side, 3))
    variables = jax.jit(model.init)(_init_key(), x)
    out, plain = jax.jit(lambda v, x: (model.apply(v, x, return_attention=True), model.apply(v, x)))(variables, x)
    assert set(out["attention"]) == {"encoder_layer_0", "encoder_layer_1"}
    weights = out["attention"]["encoder_layer_1"]
    assert weights.shape == (1, 2, 17, 17)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert out["features"]["encoder_layer_0"].shape == (1, 17, 16)
    assert out["features"]["patch_grid"].shape == (1, 4, 4, 16)
    np.testing.assert_allclose(out["features"]["patch_grid"][0, 1, 2], out["features"]["ln"][0, 1 + 1 * 4 + 2])
    assert "attention" not in plain
