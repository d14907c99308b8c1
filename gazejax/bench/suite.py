r"""Benchmark suite: `gazejax.bench` for every model of every method, demo and paper presets, one subprocess per row
(a row that runs out of memory or time is recorded as such, the others go on), and the README table from the results.

  python -m gazejax.bench.suite --out=bench_runs [--preset=demo|paper|torch|all] [--only=SUBSTRING] [--rerun]
                                     [--torch-python=PATH] [--timeout=SECONDS] [--extra=--config.a.b=v ...]
  python -m gazejax.bench.suite --out=bench_runs --table      # markdown table of what is in bench_runs

Rows already measured (their JSON exists) are skipped unless --rerun, so an interrupted suite continues. Demo rows
time 5 steps, torch rows 3, paper rows and the largest torch rows 2 (one warm-up step first). Rows marked `torch`
also time the PyTorch twin (EquiUnet, torchvision) before and after the JAX steps when --torch-python names an
interpreter that has torch; `--preset=torch` is every model that has one. Timings are only comparable when
nothing else runs on the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark: a label, the config argument, overrides, the stage timed, and whether to time torch too."""

    key: str
    label: str
    config: str
    overrides: tuple[str, ...] = ()
    stage: str = ""
    torch: bool = False
    note: str = ""
    steps: int = 0  # timed steps; 0 = the preset's (STEPS)


# A benchmark times one batch: paper rows generate a small synthetic set (real volume / image sizes, fewer cases)
# instead of the real data sets' 369 volumes (~26 GB of NIfTI) or 1083-2616 radiographs.
SMALL_DATA = {"brats": ("--config.data.synthetic.cases=12",), "cxr": ("--config.data.synthetic.images=80",)}


def _rows_of(preset: str) -> list[Row]:
    p = f"preset={preset}"
    rows = [
        Row(f"brats_ours_{preset}", "brats: EquiUnet + SAN + AAB (ours)", f"configs/brats.py:{p},method=ours"),
        Row(f"brats_equiunet_{preset}", "brats: EquiUnet (backbone)", f"configs/brats.py:{p},method=backbone",
            torch=True),
        Row(f"brats_nnunet_{preset}", "brats: nnU-Net (backbone)", f"configs/brats.py:{p},method=backbone",
            ("--config.model.backbone=nnunet",)),
        Row(f"brats_dmfnet_{preset}", "brats: DMFNet (backbone)", f"configs/brats.py:{p},method=backbone",
            ("--config.model.backbone=dmfnet",)),
    ]
    for backbone in ("efficientnet_b0", "mobilenet_v2", "resnet18"):
        rows.append(Row(f"cxr_san_{backbone}_{preset}", f"cxr_san: {backbone} + SAN + AAB (ours)",
                        f"configs/cxr_san.py:{p},method=ours,backbone={backbone}"))
    for backbone in ("resnet50", "efficientnet_v2_s"):  # paper: 1536x1280 at batch 4 needs > 24 GiB (both killed)
        rows.append(Row(f"ggcam_{backbone}_{preset}", f"ggcam: {backbone} + GG-CAM",
                        f"configs/ggcam.py:{p},method=ggcam,backbone={backbone}",
                        ("--config.batch_size=1",) if preset == "paper" else (),
                        note="batch 1" if preset == "paper" else ""))
    # paper: the UNets at 640x512 and batch 8 need > 24 GiB (stage 2 asked for 25 GB more): batch 2
    small = (("--config.batch_size=2",), "batch 2") if preset == "paper" else ((), "")
    rows += [
        Row(f"cxrgazelearn_1a_{preset}", "cxrgazelearn: DenseNet-201 triplet (stage 1a)",
            f"configs/cxrgazelearn.py:{p}", stage="stage1a"),
        Row(f"cxrgazelearn_2_{preset}", "cxrgazelearn: Res_SE-UNet + frozen DenseNet (stage 2)",
            f"configs/cxrgazelearn.py:{p}", small[0], stage="stage2", note=small[1]),
        Row(f"cxrgazelearn_3_{preset}", "cxrgazelearn: fusion classifier (stage 3)", f"configs/cxrgazelearn.py:{p}",
            small[0], stage="stage3", note=small[1]),
        Row(f"mt_unet_{preset}", "cxrgazelearn: MT-UNet baseline", f"configs/cxrgazelearn.py:{p},method=mt_unet",
            small[0], note=small[1]),
    ]
    for backbone in ("resnet50", "vit_b_16"):  # the paper's batch of 128 (x 2 views) needs > 24 GiB for ResNet-50
        rows.append(Row(f"gazat_{backbone}_{preset}", f"gazat: {backbone} pretraining (two views + attention)",
                        f"configs/gazat.py:{p},method=gazat,backbone={backbone}",
                        ("--config.batch_size=32",) if preset == "paper" else (),
                        note="batch 32" if preset == "paper" else ""))
    if preset == "paper":  # ResNet-50 at 224^2 as torchvision defines it, for the JAX/torch ratio
        rows.append(Row("resnet50_224_paper", "supervised ResNet-50 224^2 (gazat supervised)",
                        "configs/gazat.py:preset=paper,method=supervised,backbone=resnet50",
                        ("--config.batch_size=32",), torch=True, note="batch 32"))
    return rows


def _torch_rows() -> list[Row]:
    """Every model with a PyTorch twin, timed side by side (`--preset=torch`): EquiUnet at widths 8/16/48 and crops
    64/96/128 (batch 1), the seven torchvision backbones at 224^2 (batch 16), and GG-CAM's backbones at the paper's
    1536x1280 (batch 1; 4 does not fit)."""
    rows = [Row(f"torch_equiunet_w{w}_{c}", f"EquiUnet width {w}, {c}^3", "configs/brats.py:method=backbone",
                (f"--config.model.width={w}", f"--config.data.crop_size=({c}, {c}, {c})"), torch=True,
                steps=2 if w * c >= 48 * 128 else 0)
            for w in (8, 16, 48) for c in (64, 96, 128)]
    size, batch = ("--config.data.image_size=(224, 224)",), ("--config.batch_size=16",)
    for backbone in ("resnet18", "mobilenet_v2", "efficientnet_b0"):
        rows.append(Row(f"torch_{backbone}_224", f"{backbone} 224^2 (cxr_san backbone)",
                        f"configs/cxr_san.py:preset=paper,method=backbone,backbone={backbone}", size + batch,
                        torch=True))
    for backbone in ("resnet50", "vit_b_16"):
        rows.append(Row(f"torch_{backbone}_224", f"{backbone} 224^2 (gazat supervised)",
                        f"configs/gazat.py:preset=paper,method=supervised,backbone={backbone}", size + batch,
                        torch=True))
    rows.append(Row("torch_efficientnet_v2_s_224", "efficientnet_v2_s 224^2 (ggcam plain)",
                    "configs/ggcam.py:preset=paper,method=plain,backbone=efficientnet_v2_s",
                    size + batch + ("--config.data.gaze_grids.cam=(7, 7)",), torch=True))  # the CAM grid, 224 / 32
    rows.append(Row("torch_densenet201_224", "densenet201 224^2 (cxrgazelearn DNet201)",
                    "configs/cxrgazelearn.py:preset=paper,method=dnet201",
                    size + batch + ("--config.data.gaze_grids.saliency=(224, 224)",), torch=True))
    for backbone in ("resnet50", "efficientnet_v2_s"):
        rows.append(Row(f"torch_ggcam_{backbone}_paper", f"ggcam: {backbone} + GG-CAM 1536x1280",
                        f"configs/ggcam.py:preset=paper,method=ggcam,backbone={backbone}", ("--config.batch_size=1",),
                        torch=True, note="batch 1", steps=2))
    return rows


def _with_small_data(rows: list[Row]) -> list[Row]:
    return [dataclasses.replace(r, overrides=SMALL_DATA["brats" if "brats.py" in r.config else "cxr"] + r.overrides)
            for r in rows]


STEPS = {"demo": 5, "paper": 2, "torch": 3}
ROWS = {"demo": _rows_of("demo"), "paper": _with_small_data(_rows_of("paper")),
        "torch": _with_small_data(_torch_rows())}
PRESETS = tuple(ROWS)


def command(row: Row, preset: str, out: str, torch_python: str | None, extra: list[str]) -> list[str]:
    """The `gazejax.bench` command line of `row`."""
    cmd = [sys.executable, "-m", "gazejax.bench", f"--config={row.config}", f"--steps={row.steps or STEPS[preset]}",
           f"--json={os.path.join(out, row.key + '.json')}", *row.overrides, *extra]
    if row.stage:
        cmd.append(f"--stage={row.stage}")
    if row.torch and torch_python:
        cmd += ["--compare-torch", f"--torch-python={torch_python}"]
    return cmd


def run_row(row: Row, preset: str, out: str, torch_python: str | None, extra: list[str], timeout: float) -> dict:
    """Runs one row; on failure writes `<key>.failed.json` with the reason (timeout, the last error line)."""
    cmd = command(row, preset, out, torch_python, extra)
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        reason = None if proc.returncode == 0 else (
            "out of memory (killed)" if proc.returncode in (-9, 137) else
            f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    except subprocess.TimeoutExpired:
        reason = f"timed out after {timeout:.0f} s"
    status = {"key": row.key, "wall_s": time.time() - t0, "command": cmd}
    if reason:
        status["failed"] = reason
        with open(os.path.join(out, row.key + ".failed.json"), "w") as f:
            json.dump(status, f, indent=2)
    return status


def _label(row: Row) -> str:
    return f"{row.label} ({row.note})" if row.note else row.label


def _num(x: float) -> str:
    """3 significant digits without exponents (5780, not 5.78e+03)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _ms(s: dict) -> str:
    return f"{s['step_s_median'] * 1e3:.0f}"


def table(out: str, presets: list[str]) -> str:
    """Markdown table of the rows measured in `out` (failed rows say why)."""
    lines = ["| preset | model (config) | conv | batch, input | compile train / infer | median step train / infer | "
             "samples/s train / infer | GFLOP/step train | GFLOP/s train / infer | MFU train / infer | max RSS | "
             "JAX/torch time train / infer | input (x step demand) |", "|" + "---|" * 13]
    for preset in presets:
        for row in ROWS[preset]:
            path = os.path.join(out, row.key + ".json")
            failed = os.path.join(out, row.key + ".failed.json")
            if os.path.exists(failed) and (not os.path.exists(path)
                                           or os.path.getmtime(failed) >= os.path.getmtime(path)):
                with open(failed) as f:  # the latest attempt failed (an older result stays on disk, not shown)
                    lines.append(f"| {preset} | {_label(row)} | | {json.load(f)['failed']} |" + " |" * 9)
            elif os.path.exists(path):
                with open(path) as f:
                    r = json.load(f)
                tr, inf = r["train"], r["infer"]
                ratio = ("{:.2f} / {:.2f}".format(tr["jax_over_torch_time"], inf["jax_over_torch_time"])
                         if "jax_over_torch_time" in tr else "")
                shape = "x".join(str(s) for s in r["input_shapes"][0][1:-1])
                pipe = r.get("pipeline")
                feed = (f"{_num(pipe['samples_per_s'])}/s ({pipe['over_demand']:.1f}x"
                        + (f", {pipe['num_workers']} workers)" if pipe["num_workers"] else ")")) if pipe else ""
                lines.append(
                    f"| {preset} | {_label(row)} | {r.get('conv_impl', 'n/r')} | {r['batch_size']}, {shape} | "
                    f"{tr['compile_s']:.1f} / "
                    f"{inf['compile_s']:.1f} s | {_ms(tr)} / {_ms(inf)} ms | {_num(tr['samples_per_s'])} / "
                    f"{_num(inf['samples_per_s'])} | {_num(tr['flops_per_step'] / 1e9)} | "
                    f"{_num(tr['flops_per_s'] / 1e9)} / {_num(inf['flops_per_s'] / 1e9)} | "
                    f"{100 * tr['mfu']:.1f} / {100 * inf['mfu']:.1f} % | "
                    f"{r['memory']['max_rss_bytes'] / 2**30:.1f} GiB | {ratio} | {feed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder of the per-row JSON results")
    ap.add_argument("--preset", default="all", choices=(*PRESETS, "all"),
                    help="demo, paper, torch (the rows with a PyTorch twin, needs --torch-python) or all")
    ap.add_argument("--only", default="", help="run only rows whose key contains this")
    ap.add_argument("--rerun", action="store_true", help="measure rows again even when their JSON exists")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch for the rows marked torch")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per row")
    ap.add_argument("--extra", action="append", default=[], help="extra bench flag for every row (repeatable)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = ap.parse_args(argv)
    presets = list(PRESETS) if args.preset == "all" else [args.preset]
    if args.table:
        print(table(args.out, presets))
        return 0
    os.makedirs(args.out, exist_ok=True)
    for preset in presets:
        for row in ROWS[preset]:
            if args.only not in row.key:
                continue
            done = os.path.join(args.out, row.key + ".json")
            if os.path.exists(done) and not args.rerun:
                continue
            if os.path.exists(os.path.join(args.out, row.key + ".failed.json")):
                os.remove(os.path.join(args.out, row.key + ".failed.json"))
            status = run_row(row, preset, args.out, args.torch_python, args.extra, args.timeout)
            print(f"{row.key}: {status.get('failed', 'ok')} ({status['wall_s']:.0f} s)", flush=True)
    print(table(args.out, presets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
