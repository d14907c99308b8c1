"""report.md for a GazAT run (or a baseline): each stage's test results side by side (linear probe after pretraining,
few-shot fine-tunings, attention alignment with held-out gaze, pointing game), a t-SNE of the pretrained embeddings,
gaze / model-attention overlays and the loss curves."""
from __future__ import annotations

import os
import re
import time

import numpy as np

from gazejax import report as R
from gazejax.data.cxr import labels as cxr_labels

NAMES = {"gazat": "GazAT", "simclr": "SimCLR", "byol": "BYOL", "moco": "MoCo v2", "mcgip": "McGIP",
         "random_maps": "GazAT with random maps", "supervised": "supervised (all labels, no pretraining)"}
ALIGN = (("nss", "NSS"), ("auc_judd", "AUC-Judd"), ("cc", "CC"))


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _stage_metrics(results: dict) -> dict[str, dict]:
    return {name: r.get("metrics", {}) for name, r in results.get("stages", {}).items()}


def _classification(stages: dict[str, dict]) -> list[str]:
    rows = []
    for name, m in stages.items():
        key = "probe_" if "probe_auroc" in m else ""
        how = f"linear probe (C = {m['probe_c']:g})" if key else "fine-tuned classifier"
        rows.append([name, how, _f(m.get(f"{key}auroc")), _f(m.get(f"{key}accuracy")), _f(m.get(f"{key}f1"))])
    return ["Downstream classification on the test split, each stage's checkpoint (the last unless the run's "
            "monitors say otherwise). After pretraining: a logistic regression on the frozen pooled encoder "
            "features, fitted on the training split with C chosen by validation AUROC; fine-tuning stages: the "
            "classifier head.", "",
            R.markdown_table(["stage", "predictor", "AUROC", "accuracy", "F1"], rows)] + _draws(stages)


def draw_groups(names) -> dict[str, list[str]]:
    """Fine-tuning stages by label fraction: "finetune_1pct_d0", "finetune_1pct_d1" -> {"finetune_1pct": [...]}."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if name.startswith("finetune_"):
            groups.setdefault(re.sub(r"_d\d+$", "", name), []).append(name)
    return groups


def mean_std(values) -> str:
    """"mean (std)" of the finite values (sample std, ddof 1; one value: no std); "n/a" without any."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "n/a"
    return _f(float(np.mean(vals))) + (f" ({np.std(vals, ddof=1):.3f})" if len(vals) > 1 else "")


def _draws(stages: dict[str, dict]) -> list[str]:
    """Mean (std) over the label-subset draws of each fraction."""
    rows = [[group, str(len(names))] + [mean_std([stages[n].get(k) for n in names]) for k in ("auroc", "accuracy", "f1")]
            for group, names in draw_groups(stages).items()]
    if not rows:
        return []
    return ["", "Mean (std) over the label-subset draws (each a different stratified subset, the same for every "
            "method; each fine-tuning runs a fixed number of epochs and uses its last checkpoint):", "",
            R.markdown_table(["fraction", "draws", "AUROC", "accuracy", "F1"], rows)]


def _mcgip(results: dict) -> list[str]:
    m = results.get("data_info", {}).get("mcgip")
    if not m:
        return []
    return [f"- McGIP positives: {m['similarity']} similarity of the un-augmented {m['grid'][0]} x {m['grid'][1]} "
            f"gaze maps > {m['threshold']:g} marks {100 * m['positive_rate']:.2f} % of the {m['pairs']} training "
            f"image pairs with gaze (~{m['extra_positives_per_gaze_anchor']:.2f} extra positives per anchor with "
            f"gaze in a batch)"]


DIAGNOSTICS = (("regional_pos_cos", "anchor-positive"), ("regional_high_cos", "high vs other images' high"),
               ("regional_high_low_cos", "high vs low"))


def _collapse(workdir: str) -> list[str]:
    """The regional loss's collapse diagnostics as last logged in pretraining (cosines of the un-blended view's
    region features): a high-vs-high cosine near 1 with high-vs-low near -1 is the two-vector solution."""
    rows = [r for r in R.read_metrics(workdir) if "train/regional_high_cos" in r]
    if not rows:
        return []
    last = rows[-1]
    values = ", ".join(f"{name} {_f(last.get(f'train/{k}'))}" for k, name in DIAGNOSTICS)
    return [f"- regional features at the end of pretraining (step {last['step']}, mean cosines): {values}; "
            f"L_regional {_f(last.get('train/loss_regional'))}"]


def _alignment(stages: dict[str, dict]) -> list[str]:
    rows = []
    for name, m in stages.items():
        for prefix, what in (("attn_", "model attention (layers combined)"), ("gradcam_", "Grad-CAM")):
            if f"{prefix}nss" in m:
                hits = m.get(f"{prefix}pointing_n", 0)
                rows.append([name, what] + [_f(m.get(f"{prefix}{k}")) for k, _ in ALIGN]
                            + [f"{_f(m.get(prefix + 'pointing'))} (n = {int(hits)})"])
    layers = sorted({k[5:-4] for m in stages.values() for k in m if k.startswith("attn_") and k.endswith("_nss")
                     and k != "attn_nss"})
    per_layer = [[name] + [f"{_f(m.get(f'attn_{l}_nss'))} / {_f(m.get(f'attn_{l}_cc'))}" for l in layers]
                 for name, m in stages.items()]
    out = ["Model maps are resized to the evaluation grid and min-max normalised; NSS and AUC-Judd use the fixated "
           "cells of the test images' gaze, CC the gaze attention map (Sec. 2.2.2). Pointing game: a hit when the "
           "peak cell's centre lies within the tolerance of a finding location (REFLACX ellipses; EGD-CXR: heart "
           "for CHF, lungs for pneumonia); n = images with a finding location.", "",
           R.markdown_table(["stage", "map"] + [n for _, n in ALIGN] + ["pointing game"], rows)]
    if layers:
        out += ["", "Per attention layer (NSS / CC):", "", R.markdown_table(["stage"] + layers, per_layer)]
    return out


def tsne_figure(embeddings: np.ndarray, labels: np.ndarray, names: tuple[str, ...], path: str, title: str,
                perplexity: float) -> str | None:
    """t-SNE of `embeddings` coloured by class (multi-label: by label combination, the 6 most frequent)."""
    from gazejax.analysis.tsne import tsne

    if len(embeddings) < 5:
        return None
    if labels.ndim == 1:
        groups = [names[int(y)] for y in labels]
    else:
        groups = ["+".join(n for n, v in zip(names, row) if v > 0.5) or "no finding" for row in np.nan_to_num(labels)]
    common = [g for g, _ in sorted({g: groups.count(g) for g in groups}.items(), key=lambda kv: -kv[1])][:6]
    groups = [g if g in common else "other" for g in groups]
    y = tsne(embeddings, perplexity=min(perplexity, (len(embeddings) - 1) / 3))
    plt = R._plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for g in dict.fromkeys(common + ["other"]):
        sel = np.array([x == g for x in groups])
        if sel.any():
            ax.scatter(y[sel, 0], y[sel, 1], s=12, label=g)
    ax.set_title(title, fontsize=9), ax.set_xticks([]), ax.set_yticks([]), ax.legend(fontsize=6)
    return R.save_figure(fig, path)


def overlay_figure(examples: list[dict], path: str) -> str | None:
    """Rows of test images: image, gaze attention, model attention (and Grad-CAM when present)."""
    if not examples:
        return None
    cols = [k for k in ("gaze", "attn", "gradcam") if k in examples[0]]
    plt = R._plt()
    fig, axes = plt.subplots(len(examples), 1 + len(cols), figsize=(2.2 * (1 + len(cols)), 2.2 * len(examples)),
                             squeeze=False)
    h, w = examples[0]["image"].shape
    for row, ex in zip(axes, examples):
        row[0].imshow(ex["image"], cmap="gray"), row[0].set_title(ex["dicom_id"][:12], fontsize=7)
        for ax, k in zip(row[1:], cols):
            ax.imshow(ex["image"], cmap="gray")
            ax.imshow(ex[k], cmap="jet", alpha=0.45, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.set_title({"gaze": "gaze A", "attn": "model attention", "gradcam": "Grad-CAM"}[k], fontsize=7)
        for ax in row:
            ax.axis("off")
    return R.save_figure(fig, path, dpi=90)


def _figures(results: dict, config, workdir: str) -> list[str]:
    names = cxr_labels.label_names(config.data.label_set)
    lines, fig_dir = [], os.path.join(workdir, "figures")
    for name, r in results.get("stages", {}).items():
        if "embeddings" in r and (name == "pretrain" or config.method == "supervised"):
            p = tsne_figure(np.asarray(r["embeddings"]), np.asarray(r["labels"]), names,
                            os.path.join(fig_dir, f"tsne_{name}.png"), f"t-SNE of test embeddings after {name}",
                            float(config.eval.tsne_perplexity))
            if p:
                lines += [f"![t-SNE after {name}](figures/{os.path.basename(p)})", ""]
    for name, r in results.get("stages", {}).items():
        p = overlay_figure(r.get("figures", []), os.path.join(fig_dir, f"attention_{name}.png"))
        if p:
            lines += [f"Gaze and model attention after {name}:", "",
                      f"![attention {name}](figures/{os.path.basename(p)})", ""]
    curve = R.loss_curve(workdir, os.path.join(fig_dir, "loss.png"))
    if curve:
        lines += [f"![losses](figures/{os.path.basename(curve)})", ""]
    return lines


def _setup(config, results: dict) -> list[str]:
    from gazejax.methods.gazat import spec as gazat

    info = results.get("data_info", {})
    sizes = {k[:-4]: len(v) for k, v in info.items() if k.endswith("_ids")}
    lo = config.loss
    out = [f"- method: {NAMES.get(config.method, config.method)}; backbone {config.model.backbone} "
           f"({'width ' + str(config.model.resnet_width) if config.model.backbone.startswith('resnet') else 'ViT'})"
           f", input {tuple(config.data.image_size)}",
           f"- data: {config.data.dataset}{' (synthetic)' if info.get('synthetic') else ''}, images per split "
           f"{sizes}, label subsets {info.get('label_subsets', {})} distinct images",
           f"- pretraining: {config.pretrain_epochs} epochs, batch {config.batch_size}, {config.optim.name} lr "
           f"{config.optim.lr:g}; tau = {lo.temperature:g}"]
    if gazat.spec(config)[2]:
        out.append(f"- GazAT: alpha = {lo.alpha:g}, beta = {lo.beta:g}, D = {lo.distance}, lambda = "
                   f"{gazat.layer_weights(config)}, regions high >= {lo.regional_high:g} / low <= "
                   f"{lo.regional_low:g} at {gazat.region_layer(config)}; L_attn and regional negatives on "
                   f"{lo.gaze_views} view(s), negatives {lo.regional_negatives}; gaze maps {config.gaze.kind}, "
                   f"readers {config.gaze.aggregate}, max readers {config.gaze.max_readers or 'all'}")
    if gazat.spec(config)[0] == "standard":
        out.append(f"- second view: {'T_strong of a standard view' if config.views.baseline_strong else 'standard'}")
    return out + _mcgip(results)


def write(results: dict, config, workdir: str) -> str:
    """Writes `<workdir>/report.md`; returns its path."""
    stages = _stage_metrics(results)
    lines = [f"# GazAT report: {NAMES.get(config.method, config.method)}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} (preset {config.preset}).", ""] + _setup(config, results)
    lines += _collapse(workdir)
    lines += ["", "## Classification", ""] + _classification(stages)
    lines += ["", "## Attention alignment and pointing game", ""] + _alignment(stages)
    lines += ["", "## Figures", ""] + _figures(results, config, workdir)
    return R.write_report(workdir, lines)


COMPARE = (("test@pretrain", "probe_auroc", "probe AUROC"), ("test@pretrain", "probe_f1", "probe F1"),
           ("test@finetune_1pct", "auroc", "1 % AUROC"), ("test@finetune_10pct", "auroc", "10 % AUROC"),
           ("test@pretrain", "attn_nss", "NSS"), ("test@pretrain", "attn_auc_judd", "AUC-Judd"),
           ("test@pretrain", "attn_cc", "CC"), ("test@pretrain", "attn_pointing", "pointing"))


def comparison(workdirs: list[str]) -> str:
    """A markdown table of finished runs side by side (one row per workdir, from its results.json and config.json):
    linear probe, few-shot fine-tuning AUROC (mean (std) over the label-subset draws) and the pretrained model's
    attention alignment on test."""
    import json

    rows = []
    for wd in workdirs:
        with open(os.path.join(wd, "results.json")) as f:
            res = json.load(f)
        with open(os.path.join(wd, "config.json")) as f:
            cfg = json.load(f)
        method = cfg.get("method", "?")
        weak = method in ("simclr", "byol", "moco", "mcgip") and not cfg.get("views", {}).get("baseline_strong", True)
        groups = draw_groups(k[len("test@"):] for k in res if k.startswith("test@"))
        rows.append([NAMES.get(method, method) + (", two weak views" if weak else "")] + [
            mean_std([res.get(f"test@{n}", {}).get(key) for n in groups.get(split[len("test@"):], [])])
            if split.startswith("test@finetune") else _f(res.get(split, {}).get(key)) for split, key, _ in COMPARE])
    return R.markdown_table(["method"] + [name for _, _, name in COMPARE], rows)


if __name__ == "__main__":
    import sys

    print(comparison(sys.argv[1:]))
