"""report.md for a SAN+AAB BraTS run: Table 1-style Dice, Table 3-style HD95, SAN gaze metrics, figures."""
from __future__ import annotations

import os
import time

import numpy as np

from gazejax import report as R

REGIONS = (("ET", "Enhancing Tumor"), ("WT", "Whole Tumor"), ("TC", "Tumor Core"))
GAZE_KEYS = (("gaze_cc", "CC"), ("gaze_kl", "KL"), ("gaze_sim", "SIM"), ("gaze_nss", "NSS"),
             ("gaze_auc_judd", "AUC-Judd"))


def _overlay(ax, base: np.ndarray, labels: np.ndarray, title: str) -> None:
    colors = {1: (1.0, 0.1, 0.1), 2: (0.1, 0.9, 0.1), 4: (1.0, 0.9, 0.0)}
    ax.imshow(base.T, cmap="gray", origin="lower")
    rgba = np.zeros(labels.T.shape + (4,))
    for value, color in colors.items():
        rgba[labels.T == value] = color + (0.45,)
    ax.imshow(rgba, origin="lower")
    ax.set_title(title, fontsize=8), ax.axis("off")


def brats_case_figure(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, path: str, case_id: str) -> str:
    """FLAIR/T1ce axial slice through the tumour with ground truth and prediction overlays."""
    plt = R._plt()
    ref = gt if gt is not None and gt.any() else pred
    z = int(np.argmax((ref > 0).sum(axis=(0, 1)))) if ref.any() else image.shape[2] // 2
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    axes[0].imshow(image[:, :, z, 0].T, cmap="gray", origin="lower"), axes[0].set_title("FLAIR", fontsize=8)
    axes[1].imshow(image[:, :, z, 2].T, cmap="gray", origin="lower"), axes[1].set_title("T1ce", fontsize=8)
    axes[0].axis("off"), axes[1].axis("off")
    truth = gt if gt is not None else np.zeros_like(pred)
    _overlay(axes[2], image[:, :, z, 0], truth[:, :, z], "ground truth")
    _overlay(axes[3], image[:, :, z, 0], pred[:, :, z], "prediction (red NCR, green ED, yellow ET)")
    fig.suptitle(f"{case_id}, axial slice {z}", fontsize=9)
    return R.save_figure(fig, path)


def _tables(metrics: dict, label: str) -> list[str]:
    out = ["Dice in % as mean (std over cases; std as a fraction, like the paper):", ""]
    out.append(R.markdown_table(["Method"] + [f"{name} ({k})" for k, name in REGIONS],
                                [[label] + [R.fmt_mean_std(metrics.get(f"dice_{k}"), metrics.get(f"dice_{k}_std"),
                                                           100) for k, _ in REGIONS]]))
    out += ["", "HD95 in mm, mean (std) over cases (Table 3 metric):", ""]
    out.append(R.markdown_table(["Method"] + [f"{k} H-95" for k, _ in REGIONS],
                                [[label] + [R.fmt_mean_std(metrics.get(f"hd95_{k}"), metrics.get(f"hd95_{k}_std"))
                                            for k, _ in REGIONS]]))
    if any(k in metrics for k, _ in GAZE_KEYS):
        out += ["", "Predicted gaze (SAN; +gaze*: its head pooled to 1/16) vs the readers' gaze map at the SAN grid "
                "(1/16), mean (std) over cases with gaze (MIT saliency conventions):", ""]
        out.append(R.markdown_table(["Method"] + [n for _, n in GAZE_KEYS],
                                    [[label] + [R.fmt_mean_std(metrics.get(k), metrics.get(k + "_std"), 1, 3)
                                                for k, _ in GAZE_KEYS]]))
    return out


def _case_rows(cases: list[dict]) -> list[list[str]]:
    rows = []
    for c in cases:
        s = c["scores"]
        rows.append([c["case_id"]] + [f"{100 * s[f'dice_{k}']:.1f}" if f"dice_{k}" in s else "n/a" for k, _ in REGIONS]
                    + [f"{s[f'hd95_{k}']:.1f}" if f"hd95_{k}" in s else "n/a" for k, _ in REGIONS]
                    + [f"{s['gaze_cc']:.3f}" if "gaze_cc" in s else "-"])
    return rows


def _figures(test: dict, config, fig_dir: str) -> list[str]:
    lines = []
    for case in test.get("cases", []):
        if "labels_crop" not in case:
            continue
        rec = next(r for r in test["records"] if r.case_id == case["case_id"])
        image = np.asarray(rec.image())
        seg = np.asarray(rec.seg()) if rec.has_seg else None
        p = brats_case_figure(image, seg, case["labels_crop"], os.path.join(fig_dir, f"seg_{rec.case_id}.png"),
                                rec.case_id)
        lines.append(f"![segmentation {rec.case_id}](figures/{os.path.basename(p)})")
        if case.get("gaze_prob") is not None and rec.has_gaze:
            lines.append(_gaze_fig(rec, image, case["gaze_prob"], config, fig_dir))
    return lines


def _gaze_fig(rec, image, gaze_prob, config, fig_dir) -> str:
    from gazejax.data import gaze as gaze_lib

    grid = gaze_prob.shape[:3]
    padded = tuple(g * 16 for g in grid)
    truth = gaze_lib.render_gaussians(rec.points, rec.weights, config.data.gaze_sigma, padded, grid, normalize="max")
    gz = int(np.argmax(truth.sum(axis=(0, 1))))
    z = min(int((gz + 0.5) * 16), image.shape[2] - 1)
    img = np.pad(image[:, :, z, 0], [(0, padded[0] - image.shape[0]), (0, padded[1] - image.shape[1])])
    p = R.gaze_figure(img, truth[:, :, gz], gaze_prob[:, :, gz, 0], os.path.join(fig_dir, f"gaze_{rec.case_id}.png"),
                      f"{rec.case_id}: expert vs SAN gaze (grid slice {gz})")
    return f"![gaze {rec.case_id}](figures/{os.path.basename(p)})"


EVAL_MODE_TEXT = {"whole": "one pass over each case's brain box zero-padded to a multiple of 16 (open_brats2020)",
                  "window": "sliding windows of the training crop, overlapping predictions averaged"}


def protocol_lines(config) -> list[str]:
    """The choices that decide what the numbers mean: inference mode, training pool, augmentation, AAB width."""
    d, m, e = config.data, config.model, config.eval
    mode = e.get("mode", "window")
    window = tuple(e.window or d.crop_size) if mode == "window" else None
    pool = d.get("ratio_pool", "all")
    lines = [f"- Inference (`eval.mode={mode}`): {EVAL_MODE_TEXT.get(mode, mode)}"
             + (f", window {'x'.join(map(str, window))}, overlap {e.overlap}." if window else "."),
             f"- Training cases (`data.ratio_pool={pool}`): share {d.ratio} of the "
             + ("training cases that have gaze." if pool == "preferred" else "training cases, with or without gaze."),
             f"- Augmentation (`data.augment={d.get('augment', 'per_step')}`), probability {d.augment_p}."]
    if config.method in ("ours", "ours_no_gaze", "ours_surv"):
        scale = m.get("aab_scale_dim", 0) or m.aab_head_dim
        lines.append(f"- AAB: {m.aab_heads} heads x {m.aab_head_dim} = Q/K/V width {m.aab_heads * m.aab_head_dim}, "
                     f"Eq. 1 scaled by 1/sqrt({scale}).")
    if config.method == "gaze_star":
        lines.append(f"- +gaze* attention (`model.gaze_star_attention={m.get('gaze_star_attention', 'feature')}`), "
                     f"gaze head started at mean {m.get('gaze_star_prior', 0.1)} with kernel std "
                     f"{m.get('gaze_star_head_std', 0.01) or 'kaiming fan_out'} (`model.gaze_star_head_std`).")
    return lines


def write(results: dict, config, workdir: str) -> str:
    fig_dir = os.path.join(workdir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    test, val, info = results.get("test", {}), results.get("val", {}), results.get("data_info", {})
    label = {"backbone": "Backbone", "ours": "ours", "gaze_star": "+gaze*", "san_star": "+SAN*",
             "ours_no_gaze": "ours-gaze", "ours_surv": "ours+surv"}.get(config.method, config.method)
    lines = [f"# SAN+AAB BraTS report: `{config.method}` ({config.preset} preset)", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}. Data: `{info.get('root', '?')}`"
             f"{' (built-in synthetic BraTS-format data)' if info.get('synthetic') else ''}; fold {config.data.fold} "
             f"of {config.data.num_folds}, data ratio {config.data.ratio}, gaze readers `{config.data.gaze_readers}`.",
             "", R.markdown_table(["split", "cases", "with gaze"],
                                  [[k, len(info.get(f"{k}_cases", [])), info.get("with_gaze", {}).get(k, 0)]
                                   for k in ("train", "val", "test")]), "",
             "Protocol:", "", *protocol_lines(config), "",
             "## Test split (held-out fold, never used for model selection)", ""]
    lines += _tables(test.get("metrics", {}), label)
    if val.get("metrics"):
        lines += ["", "## Validation split (model selection)", ""] + _tables(val["metrics"], label)
    lines += ["", "## Per-case test results", "",
              R.markdown_table(["case"] + [f"Dice {k}" for k, _ in REGIONS] + [f"HD95 {k}" for k, _ in REGIONS]
                               + ["gaze CC"], _case_rows(test.get("cases", []))), "", "## Figures", ""]
    curve = R.loss_curve(workdir, os.path.join(fig_dir, "loss.png"))
    if curve:
        lines.append("![loss curve](figures/loss.png)")
    lines += _figures(test, config, fig_dir)
    return R.write_report(workdir, lines)
