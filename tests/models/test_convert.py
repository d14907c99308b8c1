"""Tests of gazejax.models.convert: key mapping, errors, stem adaptation, file loading, the CLI, and (when torch and
torchvision are installed) logit parity with torchvision / open_brats2020 models in eval mode."""
from __future__ import annotations

import collections
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.models import build
from gazejax.models.convert import from_torch, load_state_dict, main, param_count

HAS_UNET3D = importlib.util.find_spec("gazejax.models.unet3d") is not None


def _bn(sd: dict, prefix: str, c: int, rng: np.random.Generator) -> None:
    sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{prefix}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(7)


def _conv(sd: dict, key: str, o: int, i: int, k: int, rng: np.random.Generator) -> None:
    sd[key] = rng.normal(0, (2.0 / (i * k * k)) ** 0.5, (o, i, k, k)).astype(np.float32)  # torch OIHW


def tiny_resnet_state_dict(width: int = 8, classes: int = 10, blocks: int = 1, seed: int = 0) -> dict:
    """A torchvision ResNet(BasicBlock, [blocks] * 4) state dict written out by hand (torchvision's key names;
    width 64 and blocks 2 is resnet18)."""
    rng, sd = np.random.default_rng(seed), {}
    _conv(sd, "conv1.weight", width, 3, 7, rng)
    _bn(sd, "bn1", width, rng)
    c_in = width
    for i in range(4):
        c = width * 2**i
        for j in range(blocks):
            _conv(sd, f"layer{i + 1}.{j}.conv1.weight", c, c_in, 3, rng)
            _bn(sd, f"layer{i + 1}.{j}.bn1", c, rng)
            _conv(sd, f"layer{i + 1}.{j}.conv2.weight", c, c, 3, rng)
            _bn(sd, f"layer{i + 1}.{j}.bn2", c, rng)
            if i and not j:
                _conv(sd, f"layer{i + 1}.0.downsample.0.weight", c, c_in, 1, rng)
                _bn(sd, f"layer{i + 1}.0.downsample.1", c, rng)
            c_in = c
    sd["fc.weight"] = rng.normal(0, 0.1, (classes, c_in)).astype(np.float32)
    sd["fc.bias"] = rng.normal(0, 0.1, classes).astype(np.float32)
    return sd


TINY_RESNET = {"width": 8, "stage_sizes": (1, 1, 1, 1)}


def _torch_param_count(sd: dict) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.size for k, v in sd.items() if not k.endswith(buffers))


def test_resnet_mapping_layouts_and_counts():
    sd = tiny_resnet_state_dict()
    variables = from_torch("resnet18", sd, **TINY_RESNET)
    assert param_count(variables) == _torch_param_count(sd)
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(params["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["layer2"]["0"]["downsample"]["0"]["kernel"][0, 0],
                                  sd["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(params["layer3"]["0"]["bn2"]["scale"], sd["layer3.0.bn2.weight"])
    np.testing.assert_array_equal(stats["layer3"]["0"]["bn2"]["var"], sd["layer3.0.bn2.running_var"])
    np.testing.assert_array_equal(stats["bn1"]["mean"], sd["bn1.running_mean"])


def test_mismatch_lists_missing_and_unexpected_keys():
    sd = tiny_resnet_state_dict()
    del sd["layer1.0.conv2.weight"]
    sd["layer9.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"1 missing \[params/layer1/0/conv2/kernel\].*1 unexpected "
                                         r"\[params/layer9/0/conv1/kernel\]"):
        from_torch("resnet18", sd, **TINY_RESNET)
    with pytest.raises(ValueError, match="shape mismatches"):
        from_torch("resnet18", tiny_resnet_state_dict(), width=16, stage_sizes=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="unknown model 'resnet999'"):
        from_torch("resnet999", sd)
    with pytest.raises(ValueError, match="no 'features.conv0.weight'; is it a densenet201 checkpoint"):
        from_torch("densenet201", sd)


def test_head_is_dropped_or_replaced():
    sd = tiny_resnet_state_dict()
    assert "fc" not in from_torch("resnet18", sd, num_classes=0, **TINY_RESNET)["params"]
    fc = from_torch("resnet18", sd, num_classes=4, **TINY_RESNET)["params"]["fc"]
    assert fc["kernel"].shape == (64, 4) and np.abs(fc["kernel"]).max() <= 1 / 8  # U(+-1/sqrt(64))


def test_adapted_one_channel_stem_matches_repeated_grey():
    sd = tiny_resnet_state_dict()
    adapt = from_torch("resnet18", sd, in_channels=1, stem_mode="adapt", **TINY_RESNET)
    repeat = from_torch("resnet18", sd, in_channels=1, stem_mode="repeat", **TINY_RESNET)
    assert adapt["params"]["conv1"]["kernel"].shape == (7, 7, 1, 8)
    np.testing.assert_allclose(adapt["params"]["conv1"]["kernel"][..., 0, :], sd["conv1.weight"].sum(1).transpose(
        1, 2, 0), rtol=1e-6)
    grey = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1))
    models = [build("resnet18", num_classes=10, in_channels=1, stem_mode=mode, **TINY_RESNET)
              for mode in ("adapt", "repeat")]
    a, r = jax.jit(lambda va, vr, x: (models[0].apply(va, x)["logits"], models[1].apply(vr, x)["logits"]))(
        adapt, repeat, grey)
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_load_state_dict_formats_and_errors(tmp_path):
    sd = tiny_resnet_state_dict()
    np.savez(tmp_path / "w.npz", **sd)
    loaded = load_state_dict(str(tmp_path / "w.npz"))
    assert set(loaded) == set(sd) and np.array_equal(loaded["fc.weight"], sd["fc.weight"])
    with pytest.raises(ValueError, match="unsupported checkpoint type '.ckpt'"):
        (tmp_path / "w.ckpt").write_bytes(b"x")
        load_state_dict(str(tmp_path / "w.ckpt"))
    with pytest.raises(ValueError, match="not found"):
        load_state_dict(str(tmp_path / "missing.pth"))
    if importlib.util.find_spec("torch") is None:
        (tmp_path / "w.pth").write_bytes(b"x")
        with pytest.raises(ValueError, match=r"w\.pth: reading \.pth checkpoints needs PyTorch"):
            load_state_dict(str(tmp_path / "w.pth"))


def test_safetensors_loading(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    sd = tiny_resnet_state_dict()
    st.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    loaded = load_state_dict(str(tmp_path / "w.safetensors"))
    assert set(loaded) == set(sd) and np.array_equal(loaded["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])


def test_cli_writes_orbax_variables(tmp_path, capsys):
    orbax = pytest.importorskip("orbax.checkpoint")
    np.savez(tmp_path / "tiny.npz", **tiny_resnet_state_dict(width=64))
    with pytest.raises(ValueError, match="does not fit resnet18"):  # one block per stage is not resnet18
        main(["--arch", "resnet18", "--checkpoint", str(tmp_path / "tiny.npz"), "--out", str(tmp_path / "o")])
    full = tiny_resnet_state_dict(width=64, classes=1000, blocks=2)
    assert _torch_param_count(full) == 11_689_512
    np.savez(tmp_path / "full.npz", **full)
    main(["--arch", "resnet18", "--checkpoint", str(tmp_path / "full.npz"), "--out", str(tmp_path / "out"),
          "--num-classes", "3"])
    assert f"resnet18: {11_689_512 - 513 * 1000 + 513 * 3} parameters" in capsys.readouterr().out
    restored = orbax.PyTreeCheckpointer().restore(os.path.join(tmp_path, "out", "variables"))
    np.testing.assert_allclose(restored["params"]["conv1"]["kernel"], full["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_allclose(restored["batch_stats"]["layer4"]["1"]["bn2"]["mean"],
                               full["layer4.1.bn2.running_mean"])
    assert restored["params"]["fc"]["kernel"].shape == (512, 3)


def open_brats_keys(width: int, in_channels: int, classes: int, deep: bool, seed: int = 0) -> dict:
    """open_brats2020 EquiUnet state-dict names/shapes (src/models/unet.py, layers.py), written out by hand."""
    rng, sd = np.random.default_rng(seed), collections.OrderedDict()
    f = [width * 2**i for i in range(4)]
    blocks = {"encoder1": (in_channels, f[0], f[0]), "encoder2": (f[0], f[1], f[1]),
              "encoder3": (f[1], f[2], f[2]), "encoder4": (f[2], f[3], f[3]), "bottom": (f[3], f[3], f[3]),
              "decoder3": (2 * f[2], f[2], f[1]), "decoder2": (2 * f[1], f[1], f[0]),
              "decoder1": (2 * f[0], f[0], f[0])}
    for name, (cin, mid, out) in blocks.items():
        for j, (a, b) in enumerate(((cin, mid), (mid, out)), 1):
            sd[f"{name}.ConvBnRelu{j}.conv.weight"] = rng.normal(0, 0.1, (b, a, 3, 3, 3)).astype(np.float32)
            sd[f"{name}.ConvBnRelu{j}.bn.weight"] = rng.uniform(0.5, 1.5, b).astype(np.float32)
            sd[f"{name}.ConvBnRelu{j}.bn.bias"] = rng.normal(0, 0.1, b).astype(np.float32)
        if name == "bottom":
            sd["bottom_2.conv.weight"] = rng.normal(0, 0.1, (f[2], 2 * f[3], 3, 3, 3)).astype(np.float32)
            sd["bottom_2.bn.weight"] = rng.uniform(0.5, 1.5, f[2]).astype(np.float32)
            sd["bottom_2.bn.bias"] = rng.normal(0, 0.1, f[2]).astype(np.float32)
    heads = {"outconv": f[0]} | ({"deep_bottom.0": f[3], "deep_bottom2.0": f[2], "deep3.0": f[1], "deep2.0": f[0]}
                                  if deep else {})
    for name, cin in heads.items():
        sd[f"{name}.weight"] = rng.normal(0, 0.1, (classes, cin, 1, 1, 1)).astype(np.float32)
        sd[f"{name}.bias"] = rng.normal(0, 0.1, classes).astype(np.float32)
    return sd


@pytest.mark.skipif(not HAS_UNET3D, reason="gazejax.models.unet3d not available")
@pytest.mark.parametrize("deep", [False, True])
def test_equiunet_mapping(deep):
    sd = open_brats_keys(width=4, in_channels=4, classes=3, deep=deep)
    variables = from_torch("equiunet", sd)
    assert param_count(variables) == sum(v.size for v in sd.values())
    leaves = {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    by_value = {v.tobytes(): k for k, v in leaves.items()}
    enc = sd["encoder1.ConvBnRelu2.conv.weight"].transpose(2, 3, 4, 1, 0)
    assert "encoder1" in by_value[enc.tobytes()] and "ConvBnRelu2" in by_value[enc.tobytes()]
    assert "bottom_2" in by_value[sd["bottom_2.bn.weight"].tobytes()]
    assert "outconv" in by_value[sd["outconv.bias"].tobytes()] or "output" in by_value[sd["outconv.bias"].tobytes()]


# ----- parity with PyTorch (skipped unless torch and torchvision are installed) -----

TINY_DENSENET = {"growth_rate": 8, "block_config": (2, 3, 4, 2), "num_init_features": 16}
# name -> (torchvision constructor, gazejax kwargs). DenseNet-201 itself compiles for ~30 s on a small CPU, so its
# parity runs on a narrow DenseNet-BC of the same code path; the others are the real torchvision models.
PARITY = {
    "resnet18": (lambda tvm: tvm.resnet18(), {}),
    "resnet50": (lambda tvm: tvm.resnet50(), {}),
    "densenet201": (lambda tvm: tvm.DenseNet(**TINY_DENSENET), TINY_DENSENET),
    "efficientnet_b0": (lambda tvm: tvm.efficientnet_b0(), {}),
    "efficientnet_v2_s": (lambda tvm: tvm.efficientnet_v2_s(), {}),
    "mobilenet_v2": (lambda tvm: tvm.mobilenet_v2(), {}),
    "vit_b_16": (lambda tvm: tvm.vit_b_16(), {}),
}


def _randomise_norms(torch, model) -> None:
    """Non-trivial BN running statistics / affine terms (fresh torch BNs are the identity in eval mode)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
            if isinstance(m, torch.nn.Linear) and not m.weight.abs().sum():  # ViT's zero-initialised head
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)


def _assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    """max |out - ref| <= 1e-4 * max |ref|; the numbers are printed (visible with `pytest -s`)."""
    diff, scale = float(np.abs(np.asarray(out) - ref).max()), float(np.abs(ref).max())
    print(f"parity: max|diff| {diff:.3g}, max|ref| {scale:.3g}")
    assert diff <= 1e-4 * scale, (diff, scale)


@pytest.mark.parametrize("name", sorted(PARITY))
def test_torchvision_parity(name):
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    make, kwargs = PARITY[name]
    model = make(tvm).eval()
    _randomise_norms(torch, model)
    shape = (1, 3, 224, 224) if name == "vit_b_16" else (2, 3, 64, 64)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if name == "densenet201":  # the published ImageNet checkpoints spell `norm1` as `norm.1`
        sd = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in sd.items()}
        assert "features.denseblock1.denselayer1.norm.1.weight" in sd
    variables = from_torch(name, sd, **kwargs)
    flax_model = build(name, num_classes=1000, **kwargs)
    out = jax.jit(lambda v, x: flax_model.apply(v, x)["logits"])(variables, x.transpose(0, 2, 3, 1))
    _assert_close(out, ref)


def test_pth_checkpoint_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    sd = tiny_resnet_state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(np.asarray(v)) for k, v in sd.items()}}
    torch.save(wrapped, tmp_path / "w.pth")
    loaded = load_state_dict(str(tmp_path / "w.pth"))
    variables = from_torch("resnet18", loaded, **TINY_RESNET)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)


def _torch_equiunet(torch, width: int, in_channels: int, classes: int, deep: bool):
    """open_brats2020's EquiUnet (src/models/unet.py + layers.py, GroupNorm min(16, C) groups), rebuilt here."""
    nn = torch.nn

    def cbr(a, b, dilation=1):
        return nn.Sequential(collections.OrderedDict(
            conv=nn.Conv3d(a, b, 3, padding=dilation, dilation=dilation, bias=False),
            bn=nn.GroupNorm(min(16, b), b), relu=nn.ReLU(), dropout=nn.Dropout(0.0)))

    def ublock(a, mid, b, dilation=1):
        return nn.Sequential(collections.OrderedDict(ConvBnRelu1=cbr(a, mid, dilation),
                                                     ConvBnRelu2=cbr(mid, b, dilation)))

    def head(c, scale):
        return nn.Sequential(nn.Conv3d(c, classes, 1), nn.Upsample(scale_factor=scale, mode="trilinear",
                                                                   align_corners=True))

    f = [width * 2**i for i in range(4)]

    class EquiUnet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder1, self.encoder2 = ublock(in_channels, f[0], f[0]), ublock(f[0], f[1], f[1])
            self.encoder3, self.encoder4 = ublock(f[1], f[2], f[2]), ublock(f[2], f[3], f[3])
            self.bottom = ublock(f[3], f[3], f[3], 2)
            self.bottom_2 = cbr(2 * f[3], f[2])
            self.decoder3, self.decoder2 = ublock(2 * f[2], f[2], f[1]), ublock(2 * f[1], f[1], f[0])
            self.decoder1 = ublock(2 * f[0], f[0], f[0])
            self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
            self.outconv = nn.Conv3d(f[0], classes, 1)
            if deep:
                self.deep_bottom, self.deep_bottom2 = head(f[3], 8), head(f[2], 8)
                self.deep3, self.deep2 = head(f[1], 4), head(f[0], 2)

        def forward(self, x):
            d1 = self.encoder1(x)
            d2 = self.encoder2(nn.functional.max_pool3d(d1, 2))
            d3 = self.encoder3(nn.functional.max_pool3d(d2, 2))
            d4 = self.encoder4(nn.functional.max_pool3d(d3, 2))
            bottom = self.bottom(d4)
            bottom_2 = self.bottom_2(torch.cat([d4, bottom], 1))
            u3 = self.decoder3(torch.cat([d3, self.up(bottom_2)], 1))
            u2 = self.decoder2(torch.cat([d2, self.up(u3)], 1))
            u1 = self.decoder1(torch.cat([d1, self.up(u2)], 1))
            deeps = [self.deep_bottom(bottom), self.deep_bottom2(bottom_2), self.deep3(u3), self.deep2(u2)] \
                if deep else []
            return self.outconv(u1), deeps

    return EquiUnet()


@pytest.mark.skipif(not HAS_UNET3D, reason="gazejax.models.unet3d not available")
def test_equiunet_parity():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = _torch_equiunet(torch, width=4, in_channels=4, classes=3, deep=True).eval()
    _randomise_norms(torch, model)
    x = np.random.default_rng(0).normal(size=(1, 4, 16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref, ref_deep = model(torch.from_numpy(x))
    variables = from_torch("equiunet", {k: v.numpy() for k, v in model.state_dict().items()})
    flax_model = build("equiunet", num_classes=3, width=4, in_channels=4, deep_supervision=True)
    out = jax.jit(flax_model.apply)(variables, x.transpose(0, 2, 3, 4, 1))
    _assert_close(out["seg"], ref.numpy().transpose(0, 2, 3, 4, 1))
    for got, want in zip(out["deep"], ref_deep, strict=True):
        _assert_close(got, want.numpy().transpose(0, 2, 3, 4, 1))
