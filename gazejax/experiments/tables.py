"""Aggregation of a sweep: results.csv (one row per cell x split x metric), tables.md laid out like the paper
(mean (std) across repeats, optionally with the median), one-way ANOVA across rows over repeated runs, paired t-tests
across cases.

A table spec (a dict in the grid's "tables") holds: title, row (an override key or a tuple of keys), col (optional
key), metrics ((key, name), ...), row_labels, title_row, scale ({metric: factor}; Dice defaults to 100, i.e. %),
digits ({metric: decimals}; default 3, 2 for metrics shown scaled, e.g. in %), median (True: each cell also shows the
median across repeats, the statistic of papers that report medians), stats (False: no statistics table) and
reference (a row value: paired t-tests of every row against it over cases), split (the results.json split the table
reads; "run" = the cell's run.json: params, train_seconds).
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable

import numpy as np

from gazejax.report import markdown_table


def _load(cell_dir: str) -> tuple[dict, dict] | None:
    path = os.path.join(cell_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    if os.path.exists(os.path.join(cell_dir, "run.json")):  # the run's cost: the pseudo-split "run"
        with open(os.path.join(cell_dir, "run.json")) as f:
            results["run"] = json.load(f)
    cases = {}
    if os.path.exists(os.path.join(cell_dir, "cases.json")):
        with open(os.path.join(cell_dir, "cases.json")) as f:
            cases = json.load(f)
    return results, cases


def _scale(spec: dict, metric: str) -> float:
    return float(spec.get("scale", {}).get(metric, 100.0 if "dice" in metric else 1.0))


def _digits(spec: dict, metric: str) -> int:
    """Decimals of a metric's mean and median: 3 for fractions such as AUROC (0.812), 2 for scaled values (71.00)."""
    return int(spec.get("digits", {}).get(metric, 3 if _scale(spec, metric) == 1.0 else 2))


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def _fmt(values: list[float], scale: float, digits: int = 2, median: bool = False) -> str:
    """`mean (std)` over the finite values: mean (and median) times `scale` with `digits` decimals, the sample std
    (ddof 1, unscaled: the papers' layout) with 3; a single value has no std; `median` appends `[median m]`."""
    vals = _finite(values)
    if not vals:
        return "n/a"
    text = f"{float(np.mean(vals)) * scale:.{digits}f}"
    if len(vals) > 1:
        text += f" ({float(np.std(vals, ddof=1)):.3f})"
    if median:
        text += f" [median {float(np.median(vals)) * scale:.{digits}f}]"
    return text


def _rowval(cell: dict, key) -> Any:
    """A row is identified by one override key or by a tuple of keys (e.g. backbone and method)."""
    return tuple(cell.get(k) for k in key) if isinstance(key, (list, tuple)) else cell.get(key)


def _table(spec: dict, finished: list[tuple[dict, dict, dict]], split: str) -> list[str]:
    """One table: rows = spec["row"] values, columns = metric x spec["col"] values, cells = mean (std) over repeats."""
    row_key, col_key = spec["row"], spec.get("col")
    rows = list(dict.fromkeys(_rowval(c, row_key) for c, _, _ in finished))
    cols = list(dict.fromkeys(c.get(col_key) for c, _, _ in finished)) if col_key else [None]
    labels = spec.get("row_labels", {})
    header = [spec.get("title_row", str(row_key))]
    for metric, name in spec["metrics"]:
        header += [f"{name} {c}" if c is not None else name for c in cols]
    body = []
    for r in rows:
        line = [labels.get(r, str(r))]
        for metric, _ in spec["metrics"]:
            for col in cols:
                vals = [res.get(split, {}).get(metric) for c, res, _ in finished
                        if _rowval(c, row_key) == r and c.get(col_key) == col]
                line.append(_fmt(vals, _scale(spec, metric), _digits(spec, metric), bool(spec.get("median"))))
        body.append(line)
    return [markdown_table(header, body)]


def _anova_text(groups: list[list[float]]) -> str:
    """`F=.., p=..` of a one-way ANOVA across the groups, or why there is none."""
    from gazejax.metrics import stats

    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return "n/a (needs >= 2 repeats per row)"
    if all(np.ptp(g) == 0 for g in groups):  # no within-row variance: F is 0/0 or x/0, say so in words
        if len({g[0] for g in groups}) == 1:
            return "n/a (every repeat of every row has the same value)"
        return "F=inf, p=0 (no spread within rows)"
    anova = stats.one_way_anova(*groups)
    return f"F={anova['F']:.3f}, p={anova['p']:.4g}"


def _stats(spec: dict, finished: list[tuple[dict, dict, dict]], split: str) -> list[str]:
    """ANOVA across rows (repeats as samples) and paired t-tests of each row vs the reference row (cases)."""
    from gazejax.metrics import stats

    row_key, col_key, ref = spec["row"], spec.get("col"), spec.get("reference")
    rows = list(dict.fromkeys(_rowval(c, row_key) for c, _, _ in finished))
    cols = list(dict.fromkeys(c.get(col_key) for c, _, _ in finished)) if col_key else [None]
    out_rows = []
    for metric, name in spec["metrics"]:
        for col in cols:
            groups = [[res.get(split, {}).get(metric) for c, res, _ in finished
                       if _rowval(c, row_key) == r and c.get(col_key) == col] for r in rows]
            groups = [_finite(g) for g in groups]
            scale, digits = _scale(spec, metric), _digits(spec, metric)
            medians = ", ".join(f"{spec.get('row_labels', {}).get(r, r)} {np.median(g) * scale:.{digits}f}"
                                for r, g in zip(rows, groups) if g)
            # rows without the metric (e.g. no gaze CC for a gaze-free backbone) are left out of the ANOVA
            line = [f"{name}", "" if col is None else str(col), medians, _anova_text([g for g in groups if g])]
            if ref is not None:
                tests = []
                for r in rows:
                    if r == ref:
                        continue
                    a, b = _paired(finished, row_key, r, ref, col_key, col, split, metric)
                    if len(a) > 1:
                        t = stats.paired_ttest(a, b)
                        tests.append(f"{spec.get('row_labels', {}).get(r, r)}: t={t['t']:.3f}, p={t['p']:.4g}, "
                                     f"n={t['n']}")
                line.append("; ".join(tests) or "n/a")
            out_rows.append(line)
    header = ["metric", spec.get("col", ""), "medians", "one-way ANOVA across rows (repeats)"]
    if ref is not None:
        header.append(f"paired t-test vs {spec.get('row_labels', {}).get(ref, ref)} (cases)")
    return [markdown_table(header, out_rows)]


def _paired(finished, row_key, row, ref, col_key, col, split, metric) -> tuple[list[float], list[float]]:
    """Per-case values of `row` and `ref` on the cases both evaluated (same folds, same case ids)."""
    grouping = set(row_key if isinstance(row_key, (list, tuple)) else (row_key,)) | {col_key, "data.fold"}

    def per_case(r):
        out = {}
        for c, _, cases in finished:
            if _rowval(c, row_key) == r and c.get(col_key) == col:
                key_extra = tuple((k, v) for k, v in sorted(c.items()) if k not in grouping)
                for case_id, scores in cases.get(split, {}).items():
                    if metric in scores:
                        out[(key_extra, case_id)] = scores[metric]
        return out
    a, b = per_case(row), per_case(ref)
    common = sorted(set(a) & set(b))
    return [a[k] for k in common], [b[k] for k in common]


def _legend(grid: dict, specs: list[dict], split: str, finished: int, total: int) -> str:
    """The line under the title: how many cells are in, and what a table cell holds."""
    scaled = any(_scale(spec, m) != 1.0 for spec in specs for m, _ in spec["metrics"])
    text = (f"{finished} of {total} cells finished. Values: {split} split, mean (std) across "
            f"{grid.get('repeat_label', 'repeats')}")
    if any(spec.get("median") for spec in specs):
        text += ", [median] where shown"
    if scaled:
        text += "; values in % (e.g. Dice) keep their std as a fraction (the papers' layout)"
    return text + "."


def aggregate(workdir: str, cells: list[dict], grid: dict, name_fn: Callable[[dict], str]) -> dict[str, Any]:
    """Writes results.csv and tables.md from the finished cells; returns {"markdown", "finished", "total"}."""
    finished = []
    for cell in cells:
        loaded = _load(os.path.join(workdir, "cells", name_fn(cell)))
        if loaded is not None:
            finished.append((cell, loaded[0], loaded[1]))
    keys = sorted({k for c in cells for k in c})
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell"] + keys + ["split", "metric", "value"])
        for cell, res, _ in finished:
            for split, metrics in res.items():
                for metric, value in sorted(metrics.items()):
                    w.writerow([name_fn(cell)] + [cell.get(k, "") for k in keys] + [split, metric, value])
    split, specs = grid.get("split", "test"), grid.get("tables", [])
    lines = [f"# {grid.get('title', 'Sweep results')}", "", _legend(grid, specs, split, len(finished), len(cells)),
             ""]
    for spec in specs:
        own = spec.get("split", split)  # a table may read another split, e.g. "test@finetune_1pct" (a stage's test)
        note = [f"Values: {own} split.", ""] if own != split else []
        lines += [f"## {spec.get('title', '')}", ""] + note + _table(spec, finished, own) + [""]
        if spec.get("stats", True):
            lines += ["Statistics:", ""] + _stats(spec, finished, own) + [""]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "tables.md"), "w") as f:
        f.write(markdown)
    return {"markdown": markdown, "finished": len(finished), "total": len(cells)}
