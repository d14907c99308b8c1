"""report.md for a SAN + AAB chest X-ray run (Huang et al., Table 4): test AUROC per finding three ways, a per-class
AUROC bar chart, AUROC by evaluation, loss curves and test images with target vs predicted gaze.

Table 4 reports "the average of the best 30 epochs". The run logs the test split at every validation
(`config.track_test`, `test/*` rows of metrics.jsonl), and the report gives, with N = `config.best_n`:
- best checkpoint: the test AUROC of the checkpoint with the best validation AUROC (ordinary model selection);
- best-N by validation (honest): the mean test AUROC over the N evaluations with the best validation AUROC; the
  test split never selects anything;
- N best test (literal, optimistic): the mean of the N highest test AUROCs, the most literal reading of the
  paper's wording; it selects on the test split. Per-finding columns use the same N evaluations as the average.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from gazejax import report as R
from gazejax.data import io
from gazejax.engine.logs import read_metrics
from gazejax.methods.cxr_san.spec import FINDINGS, label_names, metric_key, param_counts

NAMES = {"backbone": "Backbone", "backbone_matched": "Backbone, param-matched (SAN + AAB without gaze)",
         "gaze_star": "+gaze*", "gaze_loss": "+gaze loss", "ours": "ours (SAN + AAB)"}
PARAM_ROWS = ("backbone", "backbone_matched", "ours")  # the parameter table of every report


def keys(names: tuple[str, ...] = FINDINGS) -> tuple[str, ...]:
    """"auroc" (the average) first, then one "auroc_<name>" per output: Table 4's finding columns by default."""
    return ("auroc",) + tuple(metric_key(f) for f in names)


MODES = (("best_val_n", "mean of the best-N evaluations by validation AUROC"),
         ("best_test_n", "mean of the N best test evaluations (optimistic)"))


def _num(value: Any) -> float:
    try:
        return float(value)  # the metric writer stores non-finite values as "nan" / "inf" strings
    except (TypeError, ValueError):
        return float("nan")


def tracked_evaluations(workdir: str) -> list[dict[str, float]]:
    """One dict per evaluation step that logged both val/auroc and test/auroc, sorted by step: {"step", "val/...",
    "test/..."}. The rows of a step are merged key by key and the last value written wins: a resumed run re-logs
    the steps after its checkpoint, and val and test are separate rows."""
    by_step: dict[int, dict[str, float]] = {}
    for row in read_metrics(workdir):
        merged = by_step.setdefault(int(row["step"]), {})
        merged.update({k: _num(v) for k, v in row.items() if k.startswith(("val/", "test/"))})
    return [{"step": s, **m} for s, m in sorted(by_step.items()) if "val/auroc" in m and "test/auroc" in m]


def _top(evals: list[dict[str, float]], key: str, n: int) -> list[dict[str, float]]:
    """The n evaluations with the highest `key` (NaN ranks last; ties: the earlier step)."""
    def rank(e):
        v = e.get(key, float("nan"))
        return (-v if math.isfinite(v) else math.inf, e["step"])
    return sorted(evals, key=rank)[:n]


def _mean_test(selected: list[dict[str, float]], key: str) -> float:
    values = [e.get(f"test/{key}", float("nan")) for e in selected]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def best_n_summary(evals: list[dict[str, float]], n: int, names: tuple[str, ...] = FINDINGS) -> dict[str, Any]:
    """The two "best N epochs" averages of the module docstring over `tracked_evaluations` rows.

    Returns {"n", "evaluations", "used" (min(n, evaluations)), "steps_best_val_n", "steps_best_test_n",
    "best_val_n": {key: mean test value}, "best_test_n": {...}} for key in "auroc" and "auroc_<finding>".
    """
    if n < 1:
        raise ValueError(f"cxr_san_report.py: best_n must be >= 1, got {n}")
    out: dict[str, Any] = {"n": int(n), "evaluations": len(evals), "used": min(int(n), len(evals))}
    for mode, rank_key in (("best_val_n", "val/auroc"), ("best_test_n", "test/auroc")):
        selected = _top(evals, rank_key, int(n))
        out[f"steps_{mode}"] = [int(e["step"]) for e in selected]
        out[mode] = {k: _mean_test(selected, k) for k in keys(names)}
    return out


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat metric names for results.json: "auroc_best_val_n", "auroc_Edema_best_test_n", ..."""
    return {f"{k}_{mode}": v for mode, _ in MODES for k, v in summary[mode].items()} | {"best_n_used": summary["used"]}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _auroc_rows(test: dict, val: dict, summary: dict, names: tuple[str, ...] = FINDINGS) -> dict[str, list[float]]:
    columns = keys(names)
    rows = {"best checkpoint (test)": [test.get(k, float("nan")) for k in columns]}
    for mode, label in MODES:
        rows[f"{label} (test)"] = [summary[mode][k] for k in columns]
    if val:
        rows["best checkpoint (validation)"] = [val.get(k, float("nan")) for k in columns]
    return rows


def auroc_bar_chart(rows: dict[str, list[float]], path: str, names: tuple[str, ...] = FINDINGS) -> str:
    """Grouped bars: one group per column (average + findings), one bar per row label; AUROC in %."""
    plt = R._plt()
    labels = ["Average", *names]
    fig, ax = plt.subplots(figsize=(10, 4.4))
    width = 0.8 / max(1, len(rows))
    for i, (name, values) in enumerate(rows.items()):
        x = np.arange(len(labels)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(x, [100 * v if np.isfinite(v) else 0.0 for v in values], width, label=name)
    ax.axhline(50, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(labels)), labels, fontsize=8)
    ax.set_ylabel("AUROC (%)"), ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    return R.save_figure(fig, path)


def auroc_curve(evals: list[dict[str, float]], summary: dict, path: str) -> str:
    """Validation and test mean AUROC at every evaluation; the best-N-by-validation evaluations are marked."""
    plt = R._plt()
    steps = [e["step"] for e in evals]
    fig, ax = plt.subplots(figsize=(7, 3.3))
    for split in ("val", "test"):
        ax.plot(steps, [100 * e[f"{split}/auroc"] for e in evals], marker=".", label=f"{split} mean AUROC")
    chosen = [e for e in evals if e["step"] in set(summary["steps_best_val_n"])]
    ax.plot([e["step"] for e in chosen], [100 * e["test/auroc"] for e in chosen], "o", mfc="none", color="k",
            label=f"best {summary['used']} by validation")
    ax.set_xlabel("step"), ax.set_ylabel("AUROC (%)"), ax.legend(fontsize=7)
    return R.save_figure(fig, path)


def _gaze_figures(figures: list[dict], fig_dir: str, names: tuple[str, ...] = FINDINGS) -> list[str]:
    lines = []
    for i, ex in enumerate(figures):
        if np.ndim(ex["label"]) == 0:  # the 3-class task: one class index
            found = [names[int(ex["label"])]]
        else:
            found = [f for f, y in zip(names, ex["label"]) if y > 0.5] or ["none"]
        probs = ", ".join(f"{f.split()[0][:5]} {p:.2f}" for f, p in zip(names, ex["probs"]))
        # gaze_figure draws volumes' (x, y) slices with origin "lower": hand it the flipped transpose
        flip = lambda a: np.flipud(np.asarray(a, np.float32)).T  # noqa: E731
        path = R.gaze_figure(flip(ex["image"]), flip(ex["target"]), flip(ex["pred"]),
                             os.path.join(fig_dir, f"gaze_{i}.png"),
                             f"{ex['dicom_id'][:17]} - findings: {', '.join(found)}\npredicted: {probs}")
        lines.append(f"![gaze {i}](figures/{os.path.basename(path)})")
    return lines


def _figures(rows: dict, evals: list, summary: dict, gaze_examples: list[dict], workdir: str,
             names: tuple[str, ...] = FINDINGS) -> list[str]:
    """The report's figures (PNG under <workdir>/figures) as markdown lines."""
    fig_dir = os.path.join(workdir, "figures")
    auroc_bar_chart(rows, os.path.join(fig_dir, "auroc_per_class.png"), names)
    lines = ["![per-class test AUROC](figures/auroc_per_class.png)"]
    if evals:
        auroc_curve(evals, summary, os.path.join(fig_dir, "auroc_by_evaluation.png"))
        lines.append("![mean AUROC by evaluation](figures/auroc_by_evaluation.png)")
    if R.loss_curve(workdir, os.path.join(fig_dir, "loss.png")):
        lines.append("![loss curve](figures/loss.png)")
    if gaze_examples:
        lines += ["", "Test images with the expert's gaze target and the predicted gaze (sigmoid of the gaze "
                  "logits; a softmax over the grid for +gaze loss), at the method's gaze grid:", ""]
        lines += _gaze_figures(gaze_examples, fig_dir, names)
    return lines


def parameter_table(config) -> list[str]:
    """Markdown lines: parameters per group of the Backbone, param-matched backbone and ours networks of this
    config (its backbone, widths and AAB site), plus this run's method if it is another."""
    methods = PARAM_ROWS + (() if config.method in PARAM_ROWS else (config.method,))
    counts = {}
    for method in methods:
        other = config.copy_and_resolve_references()
        other.method = method
        counts[method] = param_counts(other)
    groups = ("backbone", "classifier", "san", "aab", "gaze_head")
    rows = [[NAMES.get(m, m) + (" (this run)" if m == config.method else "")]
            + [f"{c.get(g, 0):,}" for g in groups] + [f"{c['total']:,}"] for m, c in counts.items()]
    return [f"Parameters (AAB site `{config.model.get('aab_site', 'stride32')}`):", "",
            R.markdown_table(["network", *groups, "total"], rows), ""]


def _header(config, info: dict, test: dict) -> list[str]:
    split_rows = [[k, len(info.get(f"{k}_ids", [])), info.get("with_gaze", {}).get(k, 0)]
                  for k in ("train", "val", "test")]
    pos = test.get("positives", {})
    return [f"# SAN + AAB chest X-ray report: {config.model.backbone} {NAMES.get(config.method, config.method)} "
            f"({config.preset} preset, ratio {config.data.ratio}, seed {config.seed})", "",
            f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}. Data: `{info.get('root', '?')}`"
            f"{' (built-in synthetic EGD-CXR-format data)' if info.get('synthetic') else ''}; images "
            f"{tuple(config.data.image_size)}, gaze grids {dict(config.data.gaze_grids)}, split {config.data.split}, "
            f"training ratio {config.data.ratio}.", "",
            R.markdown_table(["split", "images", "with gaze"], split_rows), "",
            "Test positives per finding (positives / known labels): " + ", ".join(
                f"{f} {p}/{n}" for f, (p, n) in pos.items()) + ".", ""] + parameter_table(config)


def write(results: dict, config, workdir: str) -> str:
    """Writes `<workdir>/report.md`, its figures and best_epochs.json from `{"val", "test", "data_info"}`.

    Side effect: the best-N averages (`summary_metrics`) and "params_total" are added to
    `results["test"]["metrics"]`, so they reach results.json (which the trainer writes after the report) and the
    table4 grid's tables.
    """
    fig_dir = os.path.join(workdir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    test, val = results.get("test", {}), results.get("val", {})
    evals = tracked_evaluations(workdir)
    names = label_names(config)
    summary = best_n_summary(evals, int(config.best_n), names)
    test.setdefault("metrics", {}).update(summary_metrics(summary), params_total=param_counts(config)["total"])
    io.write_json(os.path.join(workdir, "best_epochs.json"), summary)
    rows = _auroc_rows(test["metrics"], val.get("metrics", {}), summary, names)
    lines = _header(config, results.get("data_info", {}), test)
    lines += ["## Test AUROC (%)", "", R.markdown_table(["", "Average", *names],
                                                          [[k, *map(_pct, v)] for k, v in rows.items()]), "",
              f"N = {summary['n']} (`best_n`); {summary['evaluations']} evaluations were logged, so the best-N "
              f"averages use {summary['used']}. Best checkpoint: the evaluation with the best validation mean AUROC. "
              "Best-N by validation (honest): the mean test AUROC over the N evaluations with the best validation "
              "mean AUROC. N best test (the most literal reading of Table 4's \"average of the best 30 epochs\"): "
              "the mean of the N highest test mean AUROCs, i.e. selected on the test split, so optimistic. Each "
              "finding's column averages the same N evaluations.", ""]
    extra = [(k, test["metrics"][k]) for k in ("loss", "loss_bce", "loss_ce", "loss_gaze", "gaze_cc", "gaze_kl")
             if k in test["metrics"]]
    lines += ["Test split at the best checkpoint: " + ", ".join(f"{k} {v:.4f}" for k, v in extra) + ".", ""]
    lines += ["## Figures", ""] + _figures(rows, evals, summary, test.get("figures", []), workdir, names)
    return R.write_report(workdir, lines)
