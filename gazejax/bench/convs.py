r"""Per-layer convolution benchmark of EquiUnet: forward, input gradient (dx) and filter gradient (dw) of every
distinct 3x3x3 convolution of the network at a width and crop, for each `model.conv_impl` formulation and, with
--torch-python, PyTorch's `conv3d` (oneDNN) on the same shapes: where a train step's convolution time goes.

  python -m gazejax.bench.convs [--width=16] [--crop=96] [--impls=xla,mixed,onednn] [--torch-python=PATH]
                                [--repeats=3] [--json=FILE]

Each row is one layer of the network (batch 1, float32); the totals are what one forward + backward pass of the
backbone's 3x3x3 convolutions costs (the first layer's dx included, which a train step skips). Only comparable
when nothing else runs on the machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from gazejax.bench.step import median_seconds, run_repo_module

PARTS = ("fwd", "dx", "dw")


def equiunet_layers(width: int, crop: int, in_channels: int = 4) -> list[tuple[int, int, int, int]]:
    """(side, C_in, C_out, dilation) of every 3x3x3 convolution of EquiUnet (`gazejax.models.unet3d`), in order."""
    w, layers = width, []
    for level, c_in in enumerate((in_channels, w, 2 * w, 4 * w)):
        side, c = crop >> level, w * 2**level
        layers += [(side, c_in, c, 1), (side, c, c, 1)]
    s8 = crop >> 3
    layers += [(s8, 8 * w, 8 * w, 2), (s8, 8 * w, 8 * w, 2), (s8, 16 * w, 4 * w, 1)]  # bottom, bottom_2
    layers += [(crop >> 2, 8 * w, 4 * w, 1), (crop >> 2, 4 * w, 2 * w, 1),  # decoder3
               (crop >> 1, 4 * w, 2 * w, 1), (crop >> 1, 2 * w, w, 1),  # decoder2
               (crop, 2 * w, w, 1), (crop, w, w, 1)]  # decoder1
    return layers


def time_jax(layers, impls, repeats: int) -> list[dict]:
    """Seconds of fwd / dx / dw per layer and formulation."""
    import jax

    from gazejax.models import conv_impl

    rows = []
    for side, c_in, c_out, dil in layers:
        x = jax.random.normal(jax.random.key(0), (1, side, side, side, c_in))
        w = jax.random.normal(jax.random.key(1), (3, 3, 3, c_in, c_out)) * 0.1
        g = jax.random.normal(jax.random.key(2), (1, side, side, side, c_out))
        row = {"layer": [side, c_in, c_out, dil]}
        for impl in impls:
            conv = conv_impl.conv_general_dilated_for(impl)

            def f(a, b, conv=conv):
                return conv(a, b, (1, 1, 1), [(dil, dil)] * 3, None, (dil,) * 3, ("NDHWC", "DHWIO", "NDHWC"))

            jit = functools.partial(jax.jit, compiler_options=conv_impl.compiler_options(impl))
            fns = {"fwd": jit(f), "dx": jit(lambda a, b, c, f=f: jax.vjp(lambda t: f(t, b), a)[1](c)[0]),
                   "dw": jit(lambda a, b, c, f=f: jax.vjp(lambda t: f(a, t), b)[1](c)[0])}
            args = {"fwd": (x, w), "dx": (x, w, g), "dw": (x, w, g)}
            row[impl] = {p: median_seconds(lambda p=p: jax.block_until_ready(fns[p](*args[p])), repeats)
                         for p in PARTS}
        rows.append(row)
    return rows


def time_torch(layers, repeats: int) -> list[dict]:
    """Seconds of PyTorch's conv3d forward, input and weight gradient per layer (channels-first, all cores)."""
    import torch
    from torch.nn import functional, grad

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for side, c_in, c_out, dil in layers:
        x, w = torch.randn(1, c_in, side, side, side), torch.randn(c_out, c_in, 3, 3, 3) * 0.1
        g = torch.randn(1, c_out, side, side, side)
        kw = {"padding": dil, "dilation": dil}
        fns = {"fwd": lambda: functional.conv3d(x, w, **kw), "dx": lambda: grad.conv3d_input(x.shape, w, g, **kw),
               "dw": lambda: grad.conv3d_weight(x, w.shape, g, **kw)}
        with torch.no_grad():
            times = {p: median_seconds(fns[p], repeats) for p in PARTS}
            rows.append({"layer": [side, c_in, c_out, dil], "torch": times, "torch_version": torch.__version__})
    return rows


def table(rows: list[dict], impls: list[str]) -> str:
    """Markdown: ms per part and formulation per layer, the totals, and JAX/torch of each formulation's total."""
    cols = [*impls] + (["torch"] if "torch" in rows[0] else [])
    lines = ["| layer (side^3, C_in -> C_out, dilation) | " + " | ".join(f"{c} fwd / dx / dw ms" for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    totals = {c: dict.fromkeys(PARTS, 0.0) for c in cols}
    for r in rows:
        side, c_in, c_out, dil = r["layer"]
        cells = []
        for c in cols:
            cells.append(" / ".join(f"{r[c][p] * 1e3:.1f}" for p in PARTS))
            for p in PARTS:
                totals[c][p] += r[c][p]
        lines.append(f"| {side}^3, {c_in} -> {c_out}, d{dil} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        " / ".join(f"{totals[c][p] * 1e3:.0f}" for p in PARTS) + f" (sum {sum(totals[c].values()) * 1e3:.0f})"
        for c in cols) + " |")
    if "torch" in totals:
        ref = sum(totals["torch"].values())
        lines.append("\nJAX/torch time (sum of fwd + dx + dw over the layers): " + ", ".join(
            f"{c} {sum(totals[c].values()) / ref:.2f}" for c in impls))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--impls", default="xla,mixed,onednn", help="comma-separated conv_impl formulations")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch: also time torch's conv3d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the timings here")
    ap.add_argument("--torch-only", action="store_true", help="internal: time torch here and print JSON")
    args = ap.parse_args(argv)
    if args.crop % 8 or args.crop < 8:
        ap.error(f"--crop={args.crop}: EquiUnet needs a multiple of 8")
    layers = equiunet_layers(args.width, args.crop)
    if args.torch_only:
        print(json.dumps(time_torch(layers, args.repeats)))
        return 0
    impls = [i for i in args.impls.split(",") if i]
    rows = time_jax(layers, impls, args.repeats)
    if args.torch_python:
        proc = run_repo_module(args.torch_python, ["gazejax.bench.convs", "--torch-only", f"--width={args.width}",
                                                   f"--crop={args.crop}", f"--repeats={args.repeats}"])
        if proc.returncode:
            raise SystemExit(f"convs.py: {args.torch_python} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        for row, t in zip(rows, json.loads(proc.stdout.strip().splitlines()[-1])):
            row["torch"] = t["torch"]
    print(f"EquiUnet width {args.width}, crop {args.crop}^3, batch 1, float32 ({os.cpu_count()} CPUs)")
    print(table(rows, impls))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"width": args.width, "crop": args.crop, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
