"""Convert PyTorch checkpoints (torchvision backbones, open_brats2020's EquiUnet) into Flax variables.

`from_torch(name, state_dict)` maps a torch state dict (numpy arrays) onto the variables of
`gazejax.models.build(name, ...)` so that the Flax model reproduces the torch model's eval-mode output:
conv weights OIHW(D) -> HW(D)IO, linear weights transposed, BatchNorm running stats -> `batch_stats`
{mean, var}, norm weight/bias -> {scale, bias}. Any key that does not fit is reported in one clear error.

CLI (writes an Orbax PyTree checkpoint at `<DIR>/variables`, {"params": ..., ["batch_stats": ...]}, which the
trainer restores through `config.model.init_from=<DIR>`):

    python -m gazejax.models.convert --arch resnet50 --checkpoint resnet50.pth --out ckpt/resnet50 \
        [--num-classes 14] [--in-channels 1] [--stem-mode adapt]

Reading `.pth/.pt` uses `torch.load(weights_only=True)` (never unpickles code) and needs torch; `.safetensors`
(needs the `safetensors` package) and `.npz` need no torch. torch is imported only inside `load_state_dict`.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gazejax.models import build

# Per-architecture renames of torch keys onto the Flax module tree (see each model's module docstring).
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "resnet": [],
    # Old torchvision DenseNet checkpoints (the published ImageNet ones) spell `norm1` as `norm.1`.
    "densenet": [(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.")],
    "efficientnet": [(r"\.block\.", "."), (r"^classifier\.1\.", "classifier.")],
    "mobilenet": [(r"^(features\.\d+)\.conv\.", r"\1."), (r"^classifier\.1\.", "classifier.")],
    "vit": [(r"^encoder\.layers\.", "encoder."), (r"^heads\.head\.", "head."),
            (r"\.in_proj_(weight|bias)$", r".in_proj.\1")],
}
# (family, head module path in Flax, stem kernel path in Flax) per registered name.
_BACKBONES: dict[str, tuple[str, str, str]] = {
    "resnet18": ("resnet", "fc", "conv1"),
    "resnet50": ("resnet", "fc", "conv1"),
    "densenet201": ("densenet", "classifier", "features/conv0"),
    "efficientnet_b0": ("efficientnet", "classifier", "features/0/0"),
    "efficientnet_v2_s": ("efficientnet", "classifier", "features/0/0"),
    "mobilenet_v2": ("mobilenet", "classifier", "features/0/0"),
    "vit_b_16": ("vit", "head", "conv_proj"),
}
# open_brats2020 top-level modules (encoder1..4, bottom, bottom_2, decoder3..1, outconv, deep_bottom, deep_bottom2,
# deep3, deep2) are found by name anywhere in EquiUnet's Flax tree; these are the other names they may carry.
_EQUIUNET_ALIASES = {"outconv": ("output",)}
SUPPORTED = tuple(sorted(_BACKBONES)) + ("equiunet",)

Path = tuple[str, ...]  # (collection, module, ..., leaf)


def _torch_leaf(key: str, array: np.ndarray) -> tuple[str, str, np.ndarray] | None:
    """(collection, flax leaf name, array in flax layout) for a torch parameter/buffer named `...<leaf>`."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return None
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", leaf[len("running_"):], array
    if leaf == "weight" and array.ndim >= 3:  # conv OI[D]HW -> [D]HWIO
        return "params", "kernel", np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
    if leaf == "weight" and array.ndim == 2:  # linear [out, in] -> [in, out]
        return "params", "kernel", array.T
    if leaf == "weight":  # BatchNorm / GroupNorm / LayerNorm
        return "params", "scale", array
    return "params", leaf, array  # bias, class_token, pos_embedding


def _clean(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """float32 numpy copies, without the `module.` prefix that DataParallel adds."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def _expected(name: str, model_kwargs: dict) -> dict[Path, tuple[int, ...]]:
    """Flat {path: shape} of the variables of `build(name, **model_kwargs)`, via eval_shape (no compile)."""
    model = build(name, **model_kwargs)
    c = model_kwargs.get("in_channels", 4 if name == "equiunet" else 3)
    if name == "equiunet":
        x = jnp.zeros((1, 16, 16, 16, c))
    else:
        side = model_kwargs.get("image_size", 224) if name.startswith("vit") else 32
        x = jnp.zeros((1, side, side, c))
    variables = jax.eval_shape(model.init, {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    flat = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
    return {tuple(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _adapt_stem(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Fits a stem kernel [..., C_src, O] to `channels` inputs.

    For 1 channel the RGB kernel is summed over its inputs, so a grey image gives exactly the output of the
    3-channel stem on the grey image repeated to RGB; otherwise channels are cycled and rescaled by C_src / C.
    """
    c_src = kernel.shape[-2]
    if channels == c_src:
        return kernel
    if channels == 1:
        return kernel.sum(axis=-2, keepdims=True)
    reps = math.ceil(channels / c_src)
    return np.concatenate([kernel] * reps, axis=-2)[..., :channels, :] * (c_src / channels)


def _new_head(fan_in: int, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """A fresh linear head with torch's default init, U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    rng = np.random.default_rng(seed)
    return {"kernel": rng.uniform(-bound, bound, (fan_in, num_classes)).astype(np.float32),
            "bias": rng.uniform(-bound, bound, (num_classes,)).astype(np.float32)}


def _unflatten(flat: Mapping[Path, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _check(name: str, got: Mapping[Path, np.ndarray], want: Mapping[Path, tuple[int, ...]]) -> None:
    """Raises one ValueError listing missing, unexpected and mis-shaped variables."""
    def fmt(paths: list[Path]) -> str:
        return ", ".join("/".join(p) for p in sorted(paths)[:12]) + (" ..." if len(paths) > 12 else "")

    missing = [p for p in want if p not in got]
    unexpected = [p for p in got if p not in want]
    shapes = [f"{'/'.join(p)} {got[p].shape} vs {want[p]}" for p in want if p in got and got[p].shape != want[p]]
    if missing or unexpected or shapes:
        raise ValueError(
            f"state dict does not fit {name}: {len(missing)} missing [{fmt(missing)}]; {len(unexpected)} "
            f"unexpected [{fmt(unexpected)}]; {len(shapes)} shape mismatches [{'; '.join(shapes[:6])}] "
            "(pass the model kwargs the checkpoint was built with)")


def _backbone_kwargs(name: str, sd: Mapping[str, np.ndarray], head: str) -> dict:
    """Constructor kwargs readable from the checkpoint itself (classes, input channels, ViT sizes)."""
    kwargs = {"num_classes": sd[f"{head}.weight"].shape[0] if f"{head}.weight" in sd else 0}
    if name.startswith("vit") and "conv_proj.weight" in sd:
        hidden, _, patch, _ = sd["conv_proj.weight"].shape
        layers = {k.split(".")[1] for k in sd if k.startswith("encoder.encoder_layer_")}
        grid = int(round(math.sqrt(sd["encoder.pos_embedding"].shape[1] - 1)))
        kwargs.update(patch_size=patch, hidden_dim=hidden, image_size=grid * patch, num_layers=len(layers),
                      mlp_dim=sd["encoder.encoder_layer_0.mlp.0.weight"].shape[0])
    return kwargs


def _require(sd: Mapping[str, np.ndarray], key: str, name: str) -> np.ndarray:
    if key not in sd:
        raise ValueError(f"state dict has no {key!r}; is it a {name} checkpoint? (first keys: {list(sd)[:5]})")
    return sd[key]


def _convert_backbone(name: str, sd: dict[str, np.ndarray], options: dict, seed: int) -> dict:
    family, head, stem = _BACKBONES[name]
    for pattern, repl in _RENAMES[family]:
        sd = {re.sub(pattern, repl, k): v for k, v in sd.items()}
    head_key = head.replace("/", ".")
    kwargs = {**_backbone_kwargs(name, sd, head_key), **options}
    kwargs.setdefault("in_channels", _require(sd, f"{stem.replace('/', '.')}.weight", name).shape[1])
    flat = {}
    for key, value in sd.items():
        converted = _torch_leaf(key, value)
        if converted is not None:
            collection, leaf, array = converted
            flat[(collection, *key.split(".")[:-1], leaf)] = array
    want = _expected(name, kwargs)
    stem_path = ("params", *stem.split("/"), "kernel")
    flat[stem_path] = _adapt_stem(flat[stem_path], want[stem_path][-2])
    _fit_head(flat, want, ("params", *head.split("/")), seed)
    _check(name, flat, want)
    return flat


def _fit_head(flat: dict, want: Mapping[Path, tuple], head: Path, seed: int) -> None:
    """Drops the torch head when the model has none, or replaces it when the class count differs."""
    ckpt, model = flat.get(head + ("kernel",)), want.get(head + ("kernel",))
    if ckpt is not None and (model is None or model != ckpt.shape):
        for leaf in ("kernel", "bias"):
            flat.pop(head + (leaf,), None)
    if model is not None and head + ("kernel",) not in flat:
        new = _new_head(model[0], model[1], seed)
        flat[head + ("kernel",)], flat[head + ("bias",)] = new["kernel"], new["bias"]


def _equiunet_group(want: Mapping[Path, tuple], top: str) -> Path | None:
    """The Flax module path holding open_brats2020's top-level module `top` (None unless exactly one)."""
    names = {top, *_EQUIUNET_ALIASES.get(top, ())}
    found = {path[:i + 1] for path in want for i in range(1, len(path) - 1) if path[i] in names}
    return found.pop() if len(found) == 1 else None


def _convert_equiunet(sd: dict[str, np.ndarray], options: dict) -> dict:
    """Maps open_brats2020 EquiUnet keys (`encoder1.ConvBnRelu1.conv.weight`, `encoder1.ConvBnRelu1.bn.weight`,
    `bottom_2.conv.weight`, `outconv.weight`, `deep_bottom.0.weight`, ...) onto gazejax's EquiUnet.

    Each torch top-level module is located by name in the Flax tree; inside it, torch tensors are matched in
    state-dict order to the Flax leaves of the same kind (kernel / scale / bias) in path order, so only the
    block names are assumed, not the layout inside a block.
    """
    first = _require(sd, "encoder1.ConvBnRelu1.conv.weight", "equiunet")
    classes = _require(sd, "outconv.weight", "equiunet").shape[0]
    kwargs = {"num_classes": classes, "width": first.shape[0], "in_channels": first.shape[1],
              "deep_supervision": "deep_bottom.0.weight" in sd, **options}
    want = _expected("equiunet", kwargs)
    by_group: dict[Path, list[tuple[str, str, np.ndarray]]] = {}
    unmatched = []
    for key, value in sd.items():
        converted = _torch_leaf(key, value)
        group = _equiunet_group(want, key.split(".")[0])
        if converted is None:
            continue
        if group is None:
            unmatched.append(key)
            continue
        by_group.setdefault(group, []).append((key, converted[1], converted[2]))
    flat = {}
    for group, items in by_group.items():
        targets = sorted(p for p in want if p[:len(group)] == group)
        for kind in ("kernel", "scale", "bias"):
            src = [(k, a) for k, leaf, a in items if leaf == kind]
            dst = [p for p in targets if p[-1] == kind]
            if len(src) != len(dst):
                unmatched += [k for k, _ in src]
                continue
            flat.update({p: a for (_, a), p in zip(src, dst, strict=True)})
    if unmatched:
        raise ValueError(f"state dict does not fit equiunet: {len(unmatched)} unexpected or unmatched keys "
                         f"{sorted(unmatched)[:12]} (pass the model kwargs the checkpoint was built with)")
    _check("equiunet", flat, want)
    return flat


def from_torch(name: str, state_dict: Mapping[str, Any], *, seed: int = 0, **model_kwargs: Any) -> dict:
    """Flax variables {"params", ["batch_stats"]} (numpy float32) for `build(name, **kwargs)` from a torch state dict.

    Args:
      name: a registered backbone (`SUPPORTED`) or "equiunet".
      state_dict: torch parameter/buffer names -> arrays (numpy or anything `np.asarray` accepts).
      seed: seed of a fresh classifier head when `num_classes` differs from the checkpoint's.
      **model_kwargs: constructor kwargs of the target model. Defaults come from the checkpoint (classes, input
        channels, ViT/EquiUnet sizes). `num_classes=0` drops the head; another count gets a fresh head.
        `in_channels=1, stem_mode="adapt"` sums the RGB stem kernel over its inputs (other counts cycle and
        rescale it); with `stem_mode="repeat"` the 3-channel stem is kept.
    Raises:
      ValueError: unknown name, or the state dict does not fit the model (missing / unexpected keys listed).
    """
    if name not in SUPPORTED:
        raise ValueError(f"from_torch: unknown model {name!r}; supported: {', '.join(SUPPORTED)}")
    sd = _clean(state_dict)
    flat = _convert_equiunet(sd, model_kwargs) if name == "equiunet" else _convert_backbone(
        name, sd, model_kwargs, seed)
    return _unflatten(flat)


def param_count(variables: Mapping[str, Any]) -> int:
    """Number of trainable parameters (the "params" collection only)."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(variables["params"]))


def _torch_to_numpy(obj: Any) -> dict[str, np.ndarray]:
    """Unwraps {"state_dict": ...}/{"model": ...} checkpoints and turns tensors into numpy arrays."""
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    out = {}
    for key, value in obj.items():
        if hasattr(value, "detach"):  # torch.Tensor; bfloat16 has no numpy dtype, so widen floats first
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            out[key] = value.numpy()
    return out


def _read_arrays(path: str, suffix: str) -> dict[str, np.ndarray]:
    if suffix in (".pth", ".pt", ".bin"):
        try:
            import torch  # local: the library never needs torch at import time
        except ImportError as err:
            raise ValueError(f"{path}: reading {suffix} checkpoints needs PyTorch (pip install torch), or save the "
                             "state dict as .safetensors/.npz") from err
        try:
            return _torch_to_numpy(torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"{path}: refused: the file holds objects other than tensors, which would run code "
                             f"when unpickled ({str(err).splitlines()[0][:200]})") from None
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as err:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package") from err
        return dict(load_file(path))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"{path}: unsupported checkpoint type {suffix!r} (use .pth, .pt, .safetensors or .npz)")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict from `.pth/.pt` (torch, weights only), `.safetensors` or `.npz` into numpy arrays.

    Raises ValueError with one line naming the file for a missing, truncated or unreadable file, for a `.pth`
    that holds anything but tensors (nothing in it is executed), and for a tensor with NaN or Inf values (named)."""
    suffix = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise ValueError(f"{path}: checkpoint file not found")
    try:
        arrays = _read_arrays(path, suffix)
    except ValueError as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable {suffix} checkpoint ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as err:  # truncated/corrupt archives
        raise ValueError(f"{path}: unreadable {suffix} checkpoint ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]})") from None
    for key, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int(np.size(value) - np.isfinite(value).sum())
            raise ValueError(f"{path}: tensor {key!r} has {bad} NaN/Inf values of {value.size}; refusing to convert")
    return arrays


def save_variables(variables: Mapping[str, Any], out_dir: str) -> str:
    """Writes `variables` as an Orbax PyTree checkpoint at `<out_dir>/variables`; returns that path."""
    import orbax.checkpoint as ocp

    path = os.path.join(os.path.abspath(out_dir), "variables")
    if os.path.exists(path):
        raise ValueError(f"{path}: already exists; choose another --out")
    ocp.PyTreeCheckpointer().save(path, jax.tree_util.tree_map(np.asarray, dict(variables)))
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a torch checkpoint into an Orbax checkpoint of Flax variables (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=SUPPORTED)
    parser.add_argument("--checkpoint", required=True, help=".pth/.pt, .safetensors or .npz state dict")
    parser.add_argument("--out", required=True, help="output folder; variables go to <out>/variables")
    parser.add_argument("--num-classes", type=int, default=None, help="new head size (0 = no head)")
    parser.add_argument("--in-channels", type=int, default=None, help="input channels of the target model")
    parser.add_argument("--stem-mode", choices=("repeat", "adapt"), default=None,
                        help="for 1-channel inputs: tile grey to RGB, or fold the RGB stem kernel")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("in_channels", args.in_channels),
                                ("stem_mode", args.stem_mode)) if v is not None}
    variables = from_torch(args.arch, load_state_dict(args.checkpoint), **kwargs)
    path = save_variables(variables, args.out)
    print(f"{args.arch}: {param_count(variables)} parameters -> {path}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # one clear line instead of a traceback
        raise SystemExit(f"error: {err}") from None
