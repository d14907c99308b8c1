"""Where the 2D AAB sits (issue: an AAB on EfficientNet's 1280-channel final_conv was bigger than the backbone):
on the stride-32 map before the final 1x1 conv, parameter counts against a hand formula at the paper preset, and
the parameter-matched backbone (ours' network without gaze)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cxr_san as cxr_config
from gazejax.methods.cxr_san import spec as cxr_san
from gazejax.models.classifier2d import SANAABClassifier

X = jax.ShapeDtypeStruct((2, 64, 64, 1), jnp.float32)
TINY = {"efficientnet_b0": {"width_mult": 0.25, "depth_mult": 0.25, "in_channels": 1},
        "mobilenet_v2": {"width_mult": 0.25, "in_channels": 1}}
# The BatchNorm that ends the last stage (its output is "stride32"; no residual there in either network).
LAST_STAGE_BN = {"efficientnet_b0": ("features", "7", "0", "3", "1"), "mobilenet_v2": ("features", "17", "3")}


def _aab_params_by_hand(c: int, heads: int = 4, head_dim: int = 64, m2: int = 64, ffn_mult: int = 2) -> int:
    """Q from M2, K and V from [E^ds, 3 positional channels], W^O back to c, FFN c -> ffn_mult c -> c, 2 LayerNorms."""
    f = heads * head_dim
    return ((m2 + 1) * f + 2 * (c + 3 + 1) * f + (f + 1) * c + (c + 1) * ffn_mult * c + (ffn_mult * c + 1) * c
            + 2 * 2 * c)


@pytest.mark.slow
@pytest.mark.parametrize("backbone, backbone_params", [("efficientnet_b0", 4_007_548), ("mobilenet_v2", 2_223_872)])
def test_paper_preset_aab_sits_on_the_320_channel_map(backbone, backbone_params):
    c = cxr_config.get_config(f"preset=paper,method=ours,backbone={backbone}")
    ours = cxr_san.param_counts(c)
    assert ours["backbone"] == backbone_params  # torchvision's features, unchanged by the hook
    assert ours["aab"] == _aab_params_by_hand(320) == 676_608  # +0.68M, not +7.57M
    assert ours["aab"] < 0.35 * ours["backbone"]
    c.model.aab_site = "head_map"  # the old placement, on the 1280-channel final_conv
    assert cxr_san.param_counts(c)["aab"] == _aab_params_by_hand(1280) == 7_565_568
    c.method = "backbone_matched"
    c.model.aab_site = "stride32"
    assert cxr_san.param_counts(c) == ours  # the parameter-matched backbone row


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet_b0", "mobilenet_v2"])
def test_aab_output_enters_the_final_conv(backbone, fast_compile):
    """With the AAB's last LayerNorm at scale 0 and bias b, M' = b everywhere, so E' = stride32 + b: ours' logits
    must equal the plain backbone's with b added to the bias of the BatchNorm that ends the last stage (eval
    mode), and differ from them without it."""
    kwargs = dict(backbone=backbone, backbone_kwargs=TINY[backbone], san_width=4, aab_heads=2, aab_head_dim=4)
    ours, plain = SANAABClassifier(method="ours", **kwargs), SANAABClassifier(method="backbone", **kwargs)
    x = jnp.asarray(np.random.default_rng(0).random((2, 64, 64, 1)), jnp.float32)
    variables = jax.jit(ours.init)(jax.random.key(0), x)  # jitted: op-by-op EfficientNet is slower than compiling
    params = jax.tree.map(lambda p: p, variables["params"])  # a mutable copy of the nested dicts
    b = jnp.asarray(np.random.default_rng(1).normal(size=80), jnp.float32)  # 80 = 320 x width 0.25
    params["aab"]["norm2"] = {"scale": jnp.zeros(80), "bias": b}
    logits = jax.jit(ours.apply)({**variables, "params": params}, x)["logits"]
    plain_apply = jax.jit(plain.apply)

    plain_vars = {"params": {k: params[k] for k in ("backbone", "classifier")},
                  "batch_stats": {"backbone": variables["batch_stats"]["backbone"]}}
    unshifted = plain_apply(plain_vars, x)["logits"]
    node = plain_vars["params"]["backbone"]
    for key in LAST_STAGE_BN[backbone][:-1]:
        node = node[key]
    bn = node[LAST_STAGE_BN[backbone][-1]]
    node[LAST_STAGE_BN[backbone][-1]] = {**bn, "bias": bn["bias"] + b}
    np.testing.assert_allclose(logits, plain_apply(plain_vars, x)["logits"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits, unshifted, atol=1e-3)


def test_sites_and_aab_width():
    """stride32: the AAB's FFN is 2 x 80 wide on the tiny EfficientNet (final_conv 320); head_map: 2 x 320.
    ResNet has no conv after its last stage, so both sites are layer4."""
    widths = {}
    for site in ("stride32", "head_map"):
        model = SANAABClassifier(method="ours", backbone_kwargs=TINY["efficientnet_b0"], san_width=4, aab_heads=2,
                                 aab_head_dim=4, aab_site=site)
        widths[site] = jax.eval_shape(model.init, jax.random.key(0), X)["params"]["aab"]["ffn1"]["kernel"].shape
    assert widths == {"stride32": (80, 160), "head_map": (320, 640)}
    c = cxr_config.get_config("preset=paper,backbone=resnet18")
    counts = cxr_san.param_counts(c)
    c.model.aab_site = "head_map"
    assert cxr_san.param_counts(c) == counts and counts["aab"] == _aab_params_by_hand(512)
    c.model.aab_site = "final"
    with pytest.raises(ValueError, match="aab_site"):
        cxr_san.param_counts(c)


def test_backbone_matched_trains_without_gaze():
    c = cxr_config.get_config("method=backbone_matched")
    rng = np.random.default_rng(0)
    batch = {"label": (rng.random((3, 5)) < 0.5).astype(np.float32), "label_mask": np.ones((3, 5), bool),
             "has_gaze": np.ones(3, bool), "gaze_san": rng.random((3, 8, 6, 1)).astype(np.float32)}
    outputs = {"logits": rng.normal(size=(3, 5)).astype(np.float32),
               "gaze": rng.normal(size=(3, 8, 6, 1)).astype(np.float32)}
    loss, terms = cxr_san.loss_fn(outputs, batch, None, c)
    p = 1.0 / (1.0 + np.exp(-outputs["logits"].astype(np.float64)))
    bce = -np.mean(batch["label"] * np.log(p) + (1 - batch["label"]) * np.log(1 - p))
    np.testing.assert_allclose(float(loss), bce, rtol=1e-5)
    assert set(terms) == {"loss_bce"} and cxr_san.gaze_target_key(c.method) is None
    assert cxr_san.build_model(c).method == "ours"
    c.data.gaze_grids = {}  # no gaze grid needed: the method reads no gaze
    cxr_san.check_gaze_grid(c)
