"""report.md for a GG-CAM run (Zhu et al.): AUROC, per-class precision / recall (Table 2 layout), the Eq. 12
interpretability shares, the learned Eq. 10-11 scalars, loss curves and Table 3-style overlays of Psi and Omega^Y."""
from __future__ import annotations

import os
import time

import numpy as np

from gazejax import report as R
from gazejax.methods.ggcam.spec import CLASSES
from gazejax.metrics.localization import ORGANS

NAMES = {"ggcam": "+GG-CAM", "plain": "standard"}
ORGAN_NAMES = {"CHF": "heart (mediastinum mask)", "pneumonia": "lungs (left + right lung masks)"}


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _tables(metrics: dict, counts: dict, label: str) -> list[str]:
    loss = metrics.get("loss")
    out = [R.markdown_table(["network", "AUROC (one-vs-one, Hand & Till: the paper's)", "AUROC (one-vs-rest macro)",
                             "accuracy", "loss (Eq. 11; CE for standard)"],
                            [[label, _f(metrics.get("auroc_ovo")), _f(metrics.get("auroc")),
                              _f(metrics.get("accuracy")), "n/a" if loss is None else f"{loss:.4g}"]]), "",
           "Per class (one-vs-rest AUROC; precision and recall of the arg-max prediction, Table 2):", ""]
    rows = [[c, counts.get(c, 0)] + [_f(metrics.get(f"{k}_{c}")) for k in ("auroc", "precision", "recall", "f1")]
            for c in CLASSES]
    out.append(R.markdown_table(["class", "images", "AUROC", "precision", "recall", "F1"], rows))
    return out


def _interp(metrics: dict, counts: dict) -> list[str]:
    rows = []
    for y in ORGANS:
        name = CLASSES[y]
        hits, total = counts.get(name, (0, 0))
        rows.append([name, ORGAN_NAMES[name], f"{hits} / {total}", _f(metrics.get(f"interp_{name}"))])
    rows.append(["both", "", "", _f(metrics.get("interp"))])
    return ["Eq. 12: the share of images whose CAM peak argmax_ij Omega^Y_ij lies in the organ of the true class, "
            "the organ mask scaled to the CAM grid. Normal images are excluded (Eq. 12 names no organ for them); "
            "images without the needed masks are skipped.", "",
            R.markdown_table(["class", "organ S^Y", "peaks inside", "interpretability"], rows)]


def _scalars(metrics: dict) -> list[str]:
    if "alpha" not in metrics:
        return []
    return ["", f"Learned scalars: alpha = {metrics['alpha']:.4g} (Eq. 10), sigma_sm = {metrics['sigma_sm']:.4g}, "
            f"sigma_ce = {metrics['sigma_ce']:.4g} (Eq. 11); on this split L_ce = {metrics['loss_ce']:.4f} and "
            f"L_sm = {metrics['loss_sm']:.4f} (images with gaze)."]


def overlay_figure(example: dict, class_name: str, path: str) -> str:
    """Image (organ S^Y outlined), Psi and Omega^Y (min-max scaled for display, peak marked) as a PNG."""
    plt = R._plt()
    image = np.asarray(example["image"])
    height, width = image.shape
    extent = (0, width, height, 0)  # CAM cell (i, j) covers rows [i H/h, (i+1) H/h), as Eq. 12 scales the masks
    cam = np.asarray(example["cam"], np.float64)
    shown = (cam - cam.min()) / (np.ptp(cam) or 1.0)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    panels = ((None, "image" + (" + organ S^Y" if example.get("organ") is not None else "")),
              (example["gaze"], "Psi (expert gaze, Algorithm 1)" if example["has_gaze"] else "Psi (no gaze)"),
              (shown, f"Omega^Y, Y = {class_name}"))
    for ax, (heat, title) in zip(axes, panels):
        ax.imshow(image, cmap="gray", extent=extent)
        if heat is not None:
            ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, interpolation="bilinear", vmin=0, vmax=1)
        if example.get("organ") is not None:
            ax.contour(np.asarray(example["organ"], float), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(title, fontsize=8), ax.axis("off")
    cell_h, cell_w = height / cam.shape[0], width / cam.shape[1]
    axes[2].plot((peak[1] + 0.5) * cell_w, (peak[0] + 0.5) * cell_h, "w+", markersize=12, markeredgewidth=2)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in zip(CLASSES, example["probs"]))
    fig.suptitle(f"{example['dicom_id']} (true class {class_name}); predicted: {probs}", fontsize=9)
    return R.save_figure(fig, path)


def _figures(test: dict, fig_dir: str) -> list[str]:
    lines = []
    for name in CLASSES:
        example = test.get("figures", {}).get(name)
        if example is not None:
            p = overlay_figure(example, name, os.path.join(fig_dir, f"cam_{name}.png"))
            lines.append(f"![{name}: Psi and Omega^Y](figures/{os.path.basename(p)})")
    return lines


def _header(config, info: dict) -> list[str]:
    m = config.model
    label = f"{m.backbone} {NAMES.get(config.method, config.method)}"
    return [f"# GG-CAM report: {label} ({config.preset} preset, seed {config.seed})", "",
            f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}. Data: `{info.get('root', '?')}`"
            f"{' (built-in synthetic EGD-CXR-format data)' if info.get('synthetic') else ''}; images "
            f"{tuple(config.data.image_size)}, CAM / gaze grid {tuple(config.data.gaze_grids['cam'])}, split "
            f"{config.data.split}.", "",
            R.markdown_table(["split", "images", "with gaze"], [[k, len(info.get(f"{k}_ids", [])),
                                                                 info.get("with_gaze", {}).get(k, 0)]
                                                                for k in ("train", "val", "test")]), ""]


def write(results: dict, config, workdir: str) -> str:
    """Writes `<workdir>/report.md` and its figures from `{"val": ..., "test": ..., "data_info": ...}`."""
    fig_dir = os.path.join(workdir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    test, val, info = results.get("test", {}), results.get("val", {}), results.get("data_info", {})
    label = f"{config.model.backbone} {NAMES.get(config.method, config.method)}"
    lines = _header(config, info) + ["## Test split (held out, never used for model selection)", ""]
    lines += _tables(test.get("metrics", {}), test.get("class_counts", {}), label) + [""]
    lines += _interp(test.get("metrics", {}), test.get("interp_counts", {}))
    lines += _scalars(test.get("metrics", {}))
    if val.get("metrics"):
        lines += ["", "## Validation split (model selection)", ""]
        lines += _tables(val["metrics"], val.get("class_counts", {}), label)
    lines += ["", "## Figures", "", "Table 3 layout: one test image per class with the expert's gaze map Psi and "
              "the network's CAM Omega^Y of the true class (min-max scaled; + marks its peak; cyan: S^Y).", ""]
    # L_ce and L_sm only: Eq. 11's total starts near L_sm / (2 sigma_sm^2) ~ 1e16 and would flatten them
    if R.loss_curve(workdir, os.path.join(fig_dir, "loss.png"), keys=()):
        lines.append("![loss curve](figures/loss.png)")
    lines += _figures(test, fig_dir)
    return R.write_report(workdir, lines)
