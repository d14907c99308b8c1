"""The CXRGazeLearn / MT-UNet models: parameter counts against hand sums of their blocks (paper widths, by
jax.eval_shape), the Res_SE block against a numpy/scipy forward pass, the DenseNet cut point against torchvision's
DenseNet-201 count, output shapes, input checks and the gradient cut of `detach`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import correlate2d

from gazejax.models import build
from gazejax.models import saliency_unet as S
from tests.models.params import random_variables

PAPER = (64, 128, 256, 512, 1024)
TINY = (2, 4, 4, 8, 8)
TINY_DENSENET = {"growth_rate": 4, "block_config": (1, 1, 1, 1), "num_init_features": 8}


def _init_shapes(model, shape=(1, 64, 64, 1)):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda v: model.init_with_output(jax.random.key(0), v), x)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# ---- hand-summed parameter counts (conv weights + biases; BatchNorm scale + bias) ----------------------------
def conv(k, cin, cout):
    return k * k * cin * cout + cout


def cbr(cin, c):
    return conv(3, cin, c) + 2 * c


def double(cin, c):
    return cbr(cin, c) + cbr(c, c)


def res_se(cin, c):
    r = max(1, c // 16)
    return conv(3, cin, c) + cbr(cin, c) + conv(3, c, c) + 2 * c + 2 * c * r


def unet(w, block, injected=None):
    total, cin = 0, 1
    for width in w:
        total += block(cin, width)
        cin = width
    prev, dec = w[4], (w[3], w[2], w[1], w[0])
    if injected is not None:
        total += cbr(injected, w[3]) + double(w[4] + w[3], w[3])
        prev, dec = w[3], (w[2], w[1], w[0], w[0])
    for skip, d in zip((w[3], w[2], w[1], w[0]), dec):
        total += cbr(prev, d) + double(skip + d, d)
        prev = d
    return total + cbr(prev, prev) + conv(1, prev, 1)


def fusion(d_in, hidden=64, k=3):
    return d_in * hidden + hidden + hidden * k + k


DENSENET201_FEATURES = 20_013_928 - (1920 * 1000 + 1000)  # torchvision's DenseNet-201 without its classifier


@pytest.mark.parametrize("encoder,block", [("res_se", res_se), ("plain", double)])
def test_unet_parameter_counts_at_paper_widths(encoder, block):
    _, variables = _init_shapes(S.SaliencyUNet(PAPER, encoder))
    assert _count(variables["params"]) == unet(PAPER, block)


@pytest.mark.slow
def test_mtunet_and_full_model_parameter_counts():
    _, v = _init_shapes(S.MTUNet(PAPER))
    assert _count(v["params"]) == unet(PAPER, double) + fusion(1024 + 64) + 2  # + log sigma_ce, log sigma_kl
    out, v = _init_shapes(build("cxrgazelearn", widths=PAPER), (1, 640, 512, 1))
    p = v["params"]
    assert set(p) == {"features", "dnet_head", "res_se_unet", "fusion"}
    assert _count(p["features"]) == DENSENET201_FEATURES  # the whole DenseNet trains; the UNet takes transition3
    assert _count(p["dnet_head"]) == 1920 * 3 + 3
    assert _count(p["res_se_unet"]) == unet(PAPER, res_se, injected=896)
    assert _count(p["fusion"]) == fusion(1920 + 64)
    assert out["saliency"].shape == (1, 640, 512, 1) and out["logits"].shape == (1, 3)
    assert out["gradcam"].shape == (1, 20, 16, 3) and out["embedding"].shape == (1, 1920)


def test_reference_cut_injects_denseblock4():
    out, v = _init_shapes(build("cxrgazelearn", widths=TINY, encoder_kwargs=dict(TINY_DENSENET, cut="denseblock4")))
    assert "norm5" in v["params"]["features"] and "denseblock4" in v["params"]["features"]
    channels = (((8 + 4) // 2 + 4) // 2 + 4) // 2 + 4  # stem 8, + growth 4 per block, transitions halve
    assert out["embedding"].shape == (1, channels)
    kernel = v["params"]["res_se_unet"]["inject_up"]["up"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, channels, TINY[3])
    _, paper_cut = _init_shapes(build("cxrgazelearn", widths=TINY, encoder_kwargs=TINY_DENSENET))
    assert "denseblock4" in paper_cut["params"]["features"] and "norm5" in paper_cut["params"]["features"]


def test_shapes_of_every_model():
    out, _ = _init_shapes(S.SaliencyUNet(TINY, "res_se"), (2, 64, 96, 1))
    assert out["saliency"].shape == (2, 64, 96, 1) and out["saliency"].dtype == jnp.float32
    assert out["decoder_pooled"].shape == (2, TINY[0]) and out["bottleneck_pooled"].shape == (2, TINY[4])
    out, _ = _init_shapes(S.MTUNet(TINY), (2, 64, 96, 1))
    assert out["logits"].shape == (2, 3) and out["saliency"].shape == (2, 64, 96, 1)
    out, v = _init_shapes(S.DenseNetEncoder(**TINY_DENSENET), (2, 64, 96, 1))
    assert set(v["params"]) == {"features", "dnet_head"}
    assert out["map"].shape[1:3] == (2, 3) and out["gradcam"].shape == (2, 2, 3, 3)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="multiples of 32"):
        _init_shapes(S.SaliencyUNet(TINY), (1, 48, 64, 1))
    with pytest.raises(ValueError, match="encoder must be one of"):
        _init_shapes(S.SaliencyUNet(TINY, "dense"))
    with pytest.raises(ValueError, match="encoder cut must be one of"):
        _init_shapes(S.DenseNetEncoder(**TINY_DENSENET, cut="norm5"))
    with pytest.raises(ValueError, match="not a feature of this DenseNet"):
        _init_shapes(build("densenet201", num_classes=0, in_channels=1, cut="transition4", **TINY_DENSENET))
    with pytest.raises(ValueError, match="has no classifier"):
        _init_shapes(build("densenet201", num_classes=10, in_channels=1, cut="transition3", **TINY_DENSENET))


def test_res_se_block_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    block = S.ResSEBlock(features=32, reduction=16)
    v = jax.jit(lambda a: block.init(jax.random.key(0, impl="rbg"), a))(x)
    v = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32) * 0.3, v)
    v["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, v["batch_stats"])  # running var must be > 0
    got = np.asarray(block.apply(v, x, train=False))
    p, s = v["params"], v["batch_stats"]

    def conv3(a, c):  # torch Conv2d(3x3, padding 1) as scipy cross-correlations with zero padding
        k, b = np.asarray(c["kernel"], np.float64), np.asarray(c["bias"], np.float64)
        return np.stack([sum(correlate2d(a[..., i], k[:, :, i, o], mode="same") for i in range(a.shape[-1])) + b[o]
                         for o in range(k.shape[-1])], -1)

    for n in range(2):
        a = x[n].astype(np.float64)
        y = np.maximum(_bn_sub(conv3(a, p["conv1"]["conv"]), p["conv1"]["bn"], s["conv1"]["bn"]), 0)
        y = _bn_sub(conv3(y, p["conv2"]), p["bn2"], s["bn2"])
        y = np.maximum(y + conv3(a, p["shortcut"]), 0)
        squeeze = np.maximum(y.mean(axis=(0, 1)) @ p["se"]["fc1"]["kernel"], 0) @ p["se"]["fc2"]["kernel"]
        want = y / (1 + np.exp(-squeeze))
        np.testing.assert_allclose(got[n], want, rtol=2e-4, atol=2e-4)
    assert p["se"]["fc1"]["kernel"].shape == (32, 2) and "bias" not in p["se"]["fc1"]


def _bn_sub(a, params, stats):
    """Inference BatchNorm: (a - mean) / sqrt(var + 1e-5) * scale + bias (torch's eps)."""
    return ((a - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5) * np.asarray(params["scale"])
            + np.asarray(params["bias"]))


@pytest.mark.slow
def test_detach_cuts_saliency_and_fusion_gradients_at_the_encoders(fast_compile):
    model = build("cxrgazelearn", widths=TINY, encoder_kwargs=TINY_DENSENET, detach=True)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    v = random_variables(jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x))  # no initialiser to compile

    def apply(p):
        out = model.apply({**v, "params": p}, x)
        return {k: out[k] for k in ("saliency", "logits")}

    @jax.jit
    def grads(params):  # one compile: d(sum saliency) and d(sum logits) with respect to every parameter
        out, vjp = jax.vjp(apply, params)
        ones = lambda key: {k: jnp.ones_like(o) if k == key else jnp.zeros_like(o) for k, o in out.items()}  # noqa
        return vjp(ones("saliency"))[0], vjp(ones("logits"))[0]

    g_sal, g_fus = grads(v["params"])
    norm = lambda tree: float(sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))  # noqa
    assert norm(g_sal["res_se_unet"]) > 0 and norm(g_fus["fusion"]) > 0
    assert norm(g_sal["features"]) == 0 and norm(g_fus["features"]) == 0 and norm(g_fus["res_se_unet"]) == 0


def test_torchvision_densenet_checkpoint_initialises_the_encoder():
    from flax.traverse_util import flatten_dict

    from gazejax.engine.pretrained import merge

    _, torch_like = _init_shapes(build("densenet201", num_classes=1000, in_channels=1, **TINY_DENSENET))
    _, ours = _init_shapes(build("cxrgazelearn", widths=TINY, encoder_kwargs=TINY_DENSENET))
    fill = lambda tree, value: jax.tree.map(lambda s: np.full(s.shape, value, np.float32), tree)  # noqa: E731
    merged, copied, missing = merge(fill(ours, 0.0), fill(torch_like, 1.0))
    flat = flatten_dict(merged, sep="/")
    features = [k for k in flat if "/features/" in f"/{k}"]
    assert features and all(np.all(flat[k] == 1.0) for k in features)  # every encoder array copied
    assert all(np.all(flat[k] == 0.0) for k in flat if k not in features)  # heads and UNet untouched
    # not copied: torchvision's 1000-class head only (the whole DenseNet is built and trained)
    skipped = {"/".join(m.split("/")[1:3]) if "/features/" in m else m.split("/")[1] for m in missing}
    assert copied == len(features) and skipped == {"classifier"}
