"""`python -m gazejax.predict`: exported models (`python -m gazejax.export`) applied to new cases or images.

  python -m gazejax.predict --model=MODEL_DIR[,MODEL_DIR...] --input=PATH --output=DIR
                            [--overwrite] [--labels=PATH] [--save-probabilities] [--tta]   (BraTS family)
                            [--spatial=N]                                                   (BraTS family)
                            [--maps] [--batch=N]                                            (chest X-ray families)

BraTS family (`gazejax.inference.volume`): PATH is a case folder, a folder of case folders, or
`flair=...,t1=...,t1ce=...,t2=...`; writes `<case_id>.nii.gz` label maps in the input's geometry (and the SAN gaze
map, and with --save-probabilities the ET/TC/WT probabilities). Chest X-ray families (`gazejax.inference.images`):
PATH is a DICOM, PNG or JPEG file or a folder of them; writes `predictions.csv` (and with --maps the explanation
maps). Several models are ensembled by averaging probabilities. Inputs already predicted in --output are skipped
(--overwrite redoes them); a bad input is reported on one line and skipped, and the exit status is then 1.
--labels also scores the predictions (`gazejax.inference.evaluation`: metrics.csv, summary.md). --spatial=N splits
each volume along depth over N devices (the 2-D (data, spatial) mesh of training's --config.mesh.spatial; N divides
the device count), so a whole case fits where one device's memory would not; the probabilities equal --spatial=1's
up to float rounding.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from absl import flags

from gazejax.engine.command import Command

COMMAND = Command("gazejax.predict")
FLAGS = COMMAND.flags  # this command's own flags
_define = COMMAND.define

_MODEL = _define(flags.DEFINE_list, "model", None, "Exported model folder(s), comma-separated: ensembled.")
_INPUT = _define(flags.DEFINE_string, "input", None, "Case folder, folder of cases, modality files, or image "
                 "file / folder.")
_OUTPUT = _define(flags.DEFINE_string, "output", None, "Folder for the predictions.")
_OVERWRITE = _define(flags.DEFINE_bool, "overwrite", False, "Predict inputs again that --output already holds.")
_LABELS = _define(flags.DEFINE_string, "labels", None, "Reference labels: a folder of BraTS case folders with "
                  "*_seg files, or a CSV for chest X-rays (file, label | one column per finding).")
_PROBS = _define(flags.DEFINE_bool, "save-probabilities", False, "BraTS: also write <case_id>_probabilities.nii.gz.")
_TTA = _define(flags.DEFINE_bool, "tta", False, "BraTS: average over the 8 mirrored copies of each case.")
_MAPS = _define(flags.DEFINE_bool, "maps", False, "Chest X-rays: write each image's explanation map (PNG, .npy).")
_SPATIAL = _define(flags.DEFINE_integer, "spatial", 1, "BraTS: split each volume along depth over N devices (mesh "
                   "(data, spatial), as --config.mesh.spatial in training); N divides the device count.")
_BATCH = _define(flags.DEFINE_integer, "batch", None, "Chest X-rays: images per compiled call (default: the "
                 "model's eval.batch).")


def predict(model_dirs: list[str], input_path: str, output: str, *, overwrite: bool = False,
            labels: str | None = None, save_probabilities: bool = False, tta: bool = False, maps: bool = False,
            batch: int | None = None, spatial: int = 1) -> dict:
    """Library form of the command: returns the run's result dict (see `inference.volume.run` / `images.run`),
    with "metrics" when `labels` is given."""
    from gazejax.inference import common, evaluation, images, volume

    models = common.load_models(model_dirs, spatial=spatial)
    kind = models[0].meta["kind"]
    if kind == "volume":
        if maps or batch:
            raise ValueError("--maps and --batch apply to chest X-ray models; BraTS models write the gaze map always")
        result = volume.run(models, input_path, output, overwrite=overwrite, tta=tta,
                            save_probabilities=save_probabilities, labels_root=labels)
        if labels:
            result["metrics"] = evaluation.brats_summary(result["scores"], output, [m.path for m in models])
    else:
        if tta or save_probabilities:
            raise ValueError("--tta and --save-probabilities apply to BraTS models")
        result = images.run(models, input_path, output, overwrite=overwrite, maps=maps, batch=batch)
        if labels:
            result["metrics"] = evaluation.cxr_summary(result, labels, output, [m.path for m in models])
    result["kind"] = kind
    return result


def main(argv) -> int:
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's INFO lines would bury the command's own output
    logging.getLogger("gazejax").setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not _MODEL.value or not _INPUT.value or not _OUTPUT.value:
        print("gazejax.predict: usage error: --model, --input and --output are required", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        result = predict(_MODEL.value, _INPUT.value, _OUTPUT.value, overwrite=_OVERWRITE.value, labels=_LABELS.value,
                         save_probabilities=_PROBS.value, tta=_TTA.value, maps=_MAPS.value, batch=_BATCH.value,
                         spatial=_SPATIAL.value)
    except (ValueError, OSError) as e:
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        print(f"gazejax.predict: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    unit = "cases" if result["kind"] == "volume" else "images"
    print(f"predicted {result['done']} {unit} in {seconds:.1f} s ({result['done'] / max(seconds, 1e-9):.2f} {unit}/s"
          f" including loading and compiling), {result['skipped']} already done, {len(result['failures'].items)} "
          f"failed; output: {os.path.abspath(_OUTPUT.value)}")
    metrics = result.get("metrics")
    if metrics:
        shown = {k: v for k, v in metrics.items() if k.startswith(("dice_", "hd95_", "auroc", "accuracy"))
                 and not k.endswith(("_std", "_ci"))}
        print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    if result["failures"].items:
        print(f"gazejax.predict: {result['failures'].summary(result['total'])}", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    COMMAND.run(main)


if __name__ == "__main__":
    cli()
