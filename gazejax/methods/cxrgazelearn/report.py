"""report.md of a CXRGazeLearn-family run: Table 1 (classification) and Table 2 (saliency) in the paper's layout
(metrics as rows, methods as columns), paired t-tests of per-image saliency scores, the test scores of every
evaluated stage, and a Fig. 2-style figure (image, gaze, predicted saliency, MT-UNet's, Grad-CAM of the DenseNet).

Sibling runs: with `config.eval.compare_siblings`, finished runs of the same family, seed, preset and data next to
this run's workdir (the cells of `python -m gazejax.experiments --grid=tables12`, which runs the baselines before
the full method) become further columns, the t-tests pair this run's per-image scores with theirs (same test
images), and MT-UNet's predicted maps of the figure images enter Fig. 2. A single run shows its own column only.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from gazejax import report as R
from gazejax.data.cxr.labels import THREE_CLASS as CLASSES
from gazejax.methods.cxrgazelearn.spec import scratch_warning
from gazejax.metrics import stats

NAMES = {"cxrgazelearn": "Ours", "mt_unet": "MT-UNet", "dnet201_cl": "DNet201-CL", "dnet201": "DNet201",
         "res_se_unet": "Res_SE-UNet", "unet_s": "UNet_S"}
TABLE1_METHODS = ("cxrgazelearn", "mt_unet", "dnet201_cl", "dnet201")
TABLE2_METHODS = ("cxrgazelearn", "mt_unet", "res_se_unet", "unet_s")
TABLE1_ROWS = (("auroc_Normal", "AUC (Normal) ↑"), ("auroc_CHF", "AUC (Heart failure) ↑"),
               ("auroc_pneumonia", "AUC (Pneumonia) ↑"), ("auroc", "AUC ↑"), ("accuracy", "Accuracy ↑"))
# HS = the paper's histogram similarity (sum of minima of the maps normalised to sum 1); SIM = the MIT benchmark's
# (min-max stretched first), which reads higher on the same maps, so it is a row of its own
TABLE2_ROWS = (("kl", "KL ↓"), ("cc", "CC ↑"), ("hs", "HS ↑"), ("sim", "SIM ↑"))
FIG_ORDER = ("CHF", "Normal", "pneumonia")  # Fig. 2: heart failure, normal, pneumonia
SAME_RUN_KEYS = ("method_family", "seed", "preset")
SAME_DATA_KEYS = ("root", "image_size", "split", "test_seed", "dataset")


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def siblings(workdir: str, config) -> dict[str, dict]:
    """Finished runs next to `workdir` with this run's family, seed, preset and data, by method:
    {"metrics" (test), "cases" (test, case id -> scores), "dir"}."""
    here, parent = os.path.abspath(workdir), os.path.dirname(os.path.abspath(workdir))
    mine = json.loads(config.to_json_best_effort())
    found = {}
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        folder = os.path.join(parent, name)
        cfg, res = _read_json(os.path.join(folder, "config.json")), _read_json(os.path.join(folder, "results.json"))
        if folder == here or cfg is None or res is None or cfg.get("method") == config.method:
            continue
        if any(cfg.get(k) != mine.get(k) for k in SAME_RUN_KEYS) or any(
                cfg.get("data", {}).get(k) != mine["data"].get(k) for k in SAME_DATA_KEYS):
            continue
        cases = (_read_json(os.path.join(folder, "cases.json")) or {}).get("test", {})
        found[cfg["method"]] = {"metrics": res.get("test", {}), "cases": cases, "dir": folder}
    return found


def _columns(config, test: dict, others: dict, methods: tuple[str, ...]) -> list[tuple[str, dict]]:
    own = {"metrics": test.get("metrics", {}), "cases": {c["case_id"]: c["scores"] for c in test.get("cases", [])}}
    runs = {**others, config.method: own}
    return [(m, runs[m]) for m in methods if m in runs]


def table1(columns: list[tuple[str, dict]]) -> str:
    header = ["Metric"] + [NAMES[m] for m, _ in columns]
    rows = [[label] + [_f(run["metrics"].get(key)) for _, run in columns] for key, label in TABLE1_ROWS]
    return R.markdown_table(header, rows)


def table2(columns: list[tuple[str, dict]]) -> str:
    header = ["Metric"] + [NAMES[m] for m, _ in columns]
    rows = [[label] + [f"{_f(run['metrics'].get(key))} ± {_f(run['metrics'].get(f'{key}_std'))}"
                       for _, run in columns] for key, label in TABLE2_ROWS]
    return R.markdown_table(header, rows)


def ttests(columns: list[tuple[str, dict]], reference: str) -> str | None:
    """Two-sided paired t-tests of the reference's per-image KL / CC / HS / SIM against every other column."""
    runs = dict(columns)
    if reference not in runs or len(runs) < 2:
        return None
    rows = []
    for method, run in columns:
        if method == reference:
            continue
        line = [NAMES[method]]
        for key, _ in TABLE2_ROWS:
            ids = sorted(i for i in set(runs[reference]["cases"]) & set(run["cases"])
                         if key in runs[reference]["cases"][i] and key in run["cases"][i])
            if len(ids) < 2:
                line.append("n/a")
                continue
            t = stats.paired_ttest([runs[reference]["cases"][i][key] for i in ids], [run["cases"][i][key] for i in ids])
            line.append(f"Δ={t['mean_diff']:+.3f}, t={t['t']:.2f}, p={t['p']:.3g} (n={t['n']})")
        rows.append(line)
    header = [f"{NAMES[reference]} vs"] + [f"{label[:-2]} (paired t-test)" for _, label in TABLE2_ROWS]
    return R.markdown_table(header, rows)


def _stage_table(results: dict) -> list[str]:
    stages = results.get("stages", {})
    if not stages:
        return []
    keys = ("auroc", "accuracy", "kl", "cc", "hs", "sim")
    rows = [[name] + [_f(r.get("metrics", {}).get(k)) for k in keys] for name, r in stages.items()]
    return ["## Test scores of the evaluated stages (this run, each stage's best checkpoint)", "",
            "stage1b = the DenseNet with its linear head after triplet pretraining (the DNet201-CL ablation); "
            "stage2 = the saliency UNet before the fusion stage (stage 3 freezes it: parameters and BatchNorm "
            "statistics stay bit-identical and it runs in inference mode, so its saliency maps do not change).", "",
            R.markdown_table(["stage", "AUC", "accuracy", "KL", "CC", "HS", "SIM"], rows), ""]


def _show(ax, image: np.ndarray, heat: np.ndarray | None, title: str) -> None:
    height, width = image.shape
    extent = (0, width, height, 0)
    ax.imshow(image, cmap="gray", extent=extent)
    if heat is not None:
        heat = np.asarray(heat, np.float64)
        heat = (heat - heat.min()) / (np.ptp(heat) or 1.0)
        ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8), ax.axis("off")


def figure2(figures: dict, own_label: str, compare: dict[str, np.ndarray], path: str) -> str | None:
    """Rows: one test image per class; columns: X-ray, gaze (ground truth), this run's saliency, MT-UNet's (when a
    sibling run has it), Grad-CAM of the DenseNet head for the true class (when the model has a DenseNet)."""
    rows = [figures[c] for c in FIG_ORDER if c in figures]
    if not rows:
        return None
    panels = [("X-ray", lambda ex: None), ("ground truth (gaze)", lambda ex: ex["gaze"] if ex["has_gaze"] else None)]
    if any(ex.get("saliency") is not None for ex in rows):
        panels.append((own_label, lambda ex: ex.get("saliency")))
    if compare:
        panels.append(("MT-UNet", lambda ex: compare.get(ex["dicom_id"])))
    if any(ex.get("gradcam") is not None for ex in rows):
        panels.append(("Grad-CAM (DenseNet)", lambda ex: None if ex.get("gradcam") is None
                       else ex["gradcam"][..., ex["label"]]))
    plt = R._plt()
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(2.4 * len(panels), 2.9 * len(rows)), squeeze=False)
    for r, ex in enumerate(rows):
        for c, (title, get) in enumerate(panels):
            _show(axes[r, c], ex["image"], get(ex), f"{CLASSES[ex['label']]}: {title}" if c == 0 else title)
    return R.save_figure(fig, path)


def _compare_maps(others: dict) -> dict[str, np.ndarray]:
    run = others.get("mt_unet")
    path = None if run is None else os.path.join(run["dir"], "predictions", "figure_maps.npz")
    if path is None or not os.path.exists(path):
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def write(results: dict, config, workdir: str) -> str:
    """Writes `<workdir>/report.md` and its figures from `{"val", "test", "stages", "data_info"}`."""
    test, info = results.get("test", {}), results.get("data_info", {})
    others = siblings(workdir, config) if config.eval.get("compare_siblings", True) else {}
    label = NAMES.get(config.method, config.method)
    lines = [f"# CXRGazeLearn report: {label} ({config.preset} preset, seed {config.seed})", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}. Data: `{info.get('root', '?')}`"
             f"{' (built-in synthetic EGD-CXR-format data)' if info.get('synthetic') else ''}; images "
             f"{tuple(config.data.image_size)}, split {config.data.split}: "
             + ", ".join(f"{k} {len(info.get(f'{k}_ids', []))}" for k in ("train", "val", "test"))
             + f". Comparison runs found next to this one: {', '.join(NAMES[m] for m in others) or 'none'}.", ""]
    scratch = scratch_warning(config)
    if scratch:
        lines += [f"**WARNING: {scratch}.**" if config.preset == "paper" else f"Note ({config.preset} preset): "
                  f"{scratch}.", ""]
    elif config.model.get("init_from"):
        lines += [f"DenseNet initialised from `{config.model.init_from}` (converted ImageNet weights).", ""]
    for title, methods, make in (("Table 1: chest X-ray classification (test split)", TABLE1_METHODS, table1),
                                 ("Table 2: saliency prediction (test split, mean ± std over images)",
                                  TABLE2_METHODS, table2)):
        columns = _columns(config, test, others, methods)
        if columns:
            lines += [f"## {title}", "", make(columns), ""]
    tests = ttests(_columns(config, test, others, TABLE2_METHODS), "cxrgazelearn")
    if tests:
        lines += ["Two-sided paired t-tests over test images (Δ = ours - baseline):", "", tests, ""]
    lines += _stage_table(results)
    fig_dir = os.path.join(workdir, "figures")
    fig = figure2(test.get("figures", {}), label, _compare_maps(others), os.path.join(fig_dir, "fig2.png"))
    lines += ["## Figures", ""]
    if fig:
        lines += ["Fig. 2 layout: one test image per class; maps min-max scaled for display.", "",
                  "![Fig. 2](figures/fig2.png)", ""]
    if R.loss_curve(workdir, os.path.join(fig_dir, "loss.png")):
        lines.append("![loss curves](figures/loss.png)")
    return R.write_report(workdir, lines)
