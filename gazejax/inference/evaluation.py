"""`gazejax.predict --labels`: predictions scored against reference labels, with the metrics and conventions of the
training reports: `metrics.csv` (one row per case or image) and `summary.md`.

BraTS: Dice and HD95 (mm) of ET, TC and WT per case (`segmentation.brats_scores`, as training's evaluation), mean
(std over cases, ddof 1). Chest X-rays: a CSV with a `file` column (the image's path relative to --input, or its
name) and either `label` (class name or index; single-label models) or one column per finding (1, 0, empty =
unknown; multi-label models); `classification.summary` (macro and per-class AUROC, accuracy, F1) with 95 %
percentile-bootstrap confidence intervals of every AUROC over images (1000 resamples, seed 0).
"""
from __future__ import annotations

import csv
import os
import warnings

import numpy as np

from gazejax import report as R
from gazejax.data.errors import DataError
from gazejax.data.io import atomic_file, write_text
from gazejax.metrics import classification as cls
from gazejax.metrics import stats

BOOTSTRAP = 1000


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if v is not None and np.isfinite(v) else "nan"


def brats_summary(scores: dict[str, dict], out_dir: str, models: list[str]) -> dict[str, float]:
    """Writes metrics.csv and summary.md of per-case BraTS scores; returns the means."""
    keys = sorted({k for s in scores.values() for k in s})
    rows = [{"case_id": c, **{k: _fmt(s.get(k, float("nan")), 6) for k in keys}} for c, s in sorted(scores.items())]
    _write_csv(os.path.join(out_dir, "metrics.csv"), rows, ["case_id"] + keys)
    means = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in keys:
            vals = [s[k] for s in scores.values() if k in s]
            means[k], means[k + "_std"] = stats.mean_std(vals) if len(vals) > 1 else (float(np.mean(vals)),
                                                                                      float("nan"))
    regions = ("ET", "TC", "WT")
    lines = [f"# Predictions scored against reference segmentations ({len(scores)} cases)", "",
             f"Models: {', '.join(f'`{m}`' for m in models)}.", "",
             "Dice in % as mean (std over cases, as a fraction); HD95 in mm, mean (std):", "",
             R.markdown_table(["cases"] + [f"Dice {r}" for r in regions] + [f"HD95 {r}" for r in regions],
                              [[len(scores)] + [R.fmt_mean_std(means.get(f"dice_{r}"), means.get(f"dice_{r}_std"),
                                                               100) for r in regions]
                               + [R.fmt_mean_std(means.get(f"hd95_{r}"), means.get(f"hd95_{r}_std"))
                                  for r in regions]]), "", "Per case: metrics.csv.", ""]
    write_text(os.path.join(out_dir, "summary.md"), "\n".join(lines))
    return means


def _match(keys: list[str], wanted: str) -> str | None:
    if wanted in keys:
        return wanted
    by_name = [k for k in keys if os.path.basename(k) == os.path.basename(wanted)]
    return by_name[0] if len(by_name) == 1 else None


def read_cxr_labels(path: str, names: list[str], multilabel: bool, keys: list[str]) -> dict[str, object]:
    """{image key: class index | float [K] with NaN unknown} of the predicted images the CSV names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields, rows = [c.strip() for c in reader.fieldnames or ()], list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: unreadable labels CSV ({type(e).__name__}: {e})") from None
    need = ["file"] + (names if multilabel else ["label"])
    missing = [c for c in need if c not in fields]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)} (need {', '.join(need)})")
    lower = {n.lower(): i for i, n in enumerate(names)}
    out = {}
    for line, row in enumerate(rows, start=2):
        key = _match(keys, (row["file"] or "").strip())
        if key is None:
            continue
        if multilabel:
            values = [(row[n] or "").strip() for n in names]
            try:
                out[key] = np.array([float(v) if v not in ("", "-1") else np.nan for v in values])
            except ValueError:
                raise DataError(f"{path}: row {line}: finding values must be 1, 0 or empty") from None
            continue
        text = (row["label"] or "").strip()
        if text.lower() in lower:
            out[key] = lower[text.lower()]
        elif text.isdigit() and int(text) < len(names):
            out[key] = int(text)
        else:
            raise DataError(f"{path}: row {line}: label {text!r} is not one of {', '.join(names)} or an index")
    if not out:
        raise DataError(f"{path}: no row names a predicted image (column file: paths relative to --input, or names)")
    return out


def cxr_summary(result: dict, labels_path: str, out_dir: str, models: list[str]) -> dict[str, float]:
    """Writes metrics.csv and summary.md of predicted images against `labels_path`; returns the summary."""
    names, multilabel, rows = result["names"], result["multilabel"], result["rows"]
    truth = read_cxr_labels(labels_path, names, multilabel, sorted(rows))
    keys = sorted(truth)
    probs = np.array([[float(rows[k][f"p_{n}"]) for n in names] for k in keys])
    y = np.stack([truth[k] for k in keys]) if multilabel else np.array([truth[k] for k in keys])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = cls.summary(y, probs, tuple(names))
        auroc_keys = [k for k in summary if k == "auroc" or (k.startswith("auroc_") and k != "auroc_ovo")]
        ci = stats.bootstrap_ci(lambda idx: {k: v for k, v in cls.summary(y[idx], probs[idx], tuple(names)).items()
                                             if k in auroc_keys}, len(keys), n_boot=BOOTSTRAP)
    per_image = []
    for i, k in enumerate(keys):
        row = {"file": k, **{f"p_{n}": rows[k][f"p_{n}"] for n in names}, "predicted": rows[k]["predicted"]}
        row.update({n: _fmt(v, 0) for n, v in zip(names, y[i])} if multilabel else {"label": names[int(y[i])]})
        per_image.append(row)
    _write_csv(os.path.join(out_dir, "metrics.csv"), per_image,
               ["file"] + [f"p_{n}" for n in names] + ["predicted"] + (names if multilabel else ["label"]))
    table = [[k, _fmt(summary[k]), "[" + ", ".join(_fmt(v) for v in ci.get(k, (np.nan, np.nan))) + "]"]
             for k in auroc_keys]
    others = [[k, _fmt(v)] for k, v in summary.items() if k not in auroc_keys]
    lines = [f"# Predictions scored against {labels_path} ({len(keys)} of {len(rows)} predicted images labelled)",
             "", f"Models: {', '.join(f'`{m}`' for m in models)}.", "",
             f"AUROC with 95 % percentile-bootstrap confidence intervals ({BOOTSTRAP} resamples of the images):", "",
             R.markdown_table(["metric", "value", "95 % CI"], table), "", R.markdown_table(["metric", "value"], others),
             "", "Per image: metrics.csv.", ""]
    write_text(os.path.join(out_dir, "summary.md"), "\n".join(lines))
    return {**summary, **{f"{k}_ci": v for k, v in ci.items()}}
