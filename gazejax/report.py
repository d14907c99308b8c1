"""report.md and PNG figures from an evaluation: paper-style tables (mean (std) over cases), loss curves, slices."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from gazejax.data import io
from gazejax.engine.logs import read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """Paper style: "74.69 (0.022)" = mean in percent with the std as a fraction (Huang et al. Table 1)."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    s = f"{mean * scale:.{digits}f}"
    return s + (f" ({std:.3f})" if std is not None and np.isfinite(std) else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def loss_curve(workdir: str, path: str, keys: Sequence[str] = ("train/loss",)) -> str | None:
    """Plots training losses (and validation metrics if present) from metrics.jsonl; returns the PNG path."""
    rows = read_metrics(workdir)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in list(keys) + sorted({k for r in rows for k in r if k.startswith("train/loss_")}):
        pts = {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}
        if pts:
            steps = sorted(pts)
            axes[0].plot(steps, [pts[s] for s in steps], label=key.replace("train/", ""))
    axes[0].set_xlabel("step"), axes[0].set_ylabel("loss"), axes[0].legend(fontsize=7)
    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and not k.endswith("_std")
                       and ("dice" in k or "auroc" in k or "cc" in k)})
    for key in val_keys:
        pts = {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}
        if pts:
            steps = sorted(pts)
            axes[1].plot(steps, [pts[s] for s in steps], marker="o", label=key.replace("val/", ""))
    axes[1].set_xlabel("step"), axes[1].set_ylabel("validation"), axes[1].legend(fontsize=7)
    return save_figure(fig, path)


def gaze_figure(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str, title: str) -> str:
    """Image slice, readers' gaze map and predicted gaze map (maps up-sampled to the image for display)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(image.T, cmap="gray", origin="lower"), axes[0].set_title("image", fontsize=8)
    extent = (0, image.shape[0], 0, image.shape[1])
    for ax, m, name in ((axes[1], truth, "expert gaze"), (axes[2], pred, "predicted gaze")):
        ax.imshow(image.T, cmap="gray", origin="lower", extent=extent)
        ax.imshow(m.T, cmap="jet", alpha=0.5, origin="lower", extent=extent, interpolation="bilinear")
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Lays out, writes (creating the folder) and closes a matplotlib figure; returns `path`."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def write_report(workdir: str, lines: Sequence[str]) -> str:
    """Writes the lines as `<workdir>/report.md` (atomically: a reader never sees half a report); returns its path."""
    return io.write_text(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
