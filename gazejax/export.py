"""`python -m gazejax.export`: a trained run's selected weights as a self-contained model folder
(`gazejax.engine.model_dir`) that `gazejax.predict` and `gazejax.main --mode=evaluate --model=DIR` read.

  python -m gazejax.export --workdir=RUN [--stage=NAME] --out=MODEL_DIR [--overwrite]

The weights are those the run's own test evaluation used: the stage's best checkpoint by its monitored validation
metric, else its newest (default stage: the last, as `--mode=evaluate`).
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import sys
from importlib import metadata

from absl import flags

from gazejax.engine.command import Command

PACKAGES = ("gazejax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "nibabel", "pydicom")


COMMAND = Command("gazejax.export")
FLAGS = COMMAND.flags  # this command's own flags
_define = COMMAND.define

_WORKDIR = _define(flags.DEFINE_string, "workdir", None, "The training run's folder (config.json, checkpoints/).")
_STAGE = _define(flags.DEFINE_string, "stage", None, "Stage whose weights to export (default: the last stage).")
_OUT = _define(flags.DEFINE_string, "out", None, "The model folder to write.")
_OVERWRITE = _define(flags.DEFINE_bool, "overwrite", False, "Replace an existing, non-empty --out folder.")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run_facts(workdir: str, config) -> dict:
    """What the model card says about the data and results: data settings, evaluated case/image ids per split,
    and the run's final metrics (results.json)."""
    d = config.data
    data = {k: d.get(k) for k in ("dataset", "root", "fold", "num_folds", "split_seed", "ratio", "ratio_pool",
                                  "split", "seed", "test_seed", "label_set", "image_size", "crop_size")
            if d.get(k) is not None}
    data["synthetic"] = not d.get("root")
    cases = _read_json(os.path.join(workdir, "cases.json"))
    return {"data": data, "evaluated": {s: sorted(v) for s, v in cases.items()},
            "results": _read_json(os.path.join(workdir, "results.json"))}


def model_card(meta: dict) -> str:
    facts, results = meta["facts"], meta["facts"].get("results", {})
    lines = [f"# gazejax model: {meta['method_family']} / {meta['method']} ({meta['preset']} preset)", "",
             f"Exported {meta['created']} from `{meta['source_workdir']}`: stage `{meta['stage']}`, checkpoint step "
             f"{meta['step']} ({meta['selection']}).", "",
             f"Input: {meta['kind']}; outputs: {', '.join(meta['labels'])}"
             + (" (independent per-finding probabilities)" if meta.get("multilabel") else "")
             + (f"; explanation map: {meta['map_name']}" if meta.get("map_name") else "") + ".", "",
             "## Data", "", *[f"- {k}: {v}" for k, v in facts["data"].items()],
             *[f"- {split} cases/images evaluated: {len(ids)}" for split, ids in facts["evaluated"].items()], "",
             "## Test metrics of the run (results.json)", ""]
    test = results.get("test", {})
    lines += [f"- {k}: {v:.4f}" for k, v in test.items() if isinstance(v, (int, float)) and not k.endswith("_std")] \
        or ["- none recorded (the run did not finish its evaluation)"]
    lines += ["", "## Preprocessing", "", "```json", json.dumps(meta["preprocessing"], indent=2), "```", "",
              "## Versions", "", *[f"- {k} {v}" for k, v in meta["versions"].items()], "",
              "Apply it: `python -m gazejax.predict --model=<this folder> --input=PATH --output=DIR`.", ""]
    return "\n".join(lines)


def export(workdir: str, out: str, stage_name: str | None = None, overwrite: bool = False) -> str:
    """Writes the export of `workdir`'s stage (default the last) to `out`; returns the folder's path."""
    import jax

    from gazejax import methods
    from gazejax.engine import model_dir, trainer as train, workdir as workdirs

    workdir = os.path.abspath(workdir)
    saved = workdirs.read_config(workdir)
    if saved is None:
        raise FileNotFoundError(f"{workdir}/config.json: missing or unreadable; --workdir must be a gazejax run folder")
    config = model_dir.ml_config(saved)
    method = methods.get(config.method_family)
    if method.inference is None:
        raise ValueError(f"method family {config.method_family!r} declares no inference (Method.inference)")
    stages = method.stages(config)
    names = [s.name for s in stages]
    idx = len(stages) - 1 if stage_name is None else (names.index(stage_name) if stage_name in names else -1)
    if idx < 0:
        raise ValueError(f"--stage={stage_name}: the run's stages are {', '.join(names)}")
    build = copy.deepcopy(config)  # the exported weights replace the initialisation: no pretrained file needed
    with build.unlocked():
        build.model.init_from = ""
    with workdirs.WorkdirLock(workdir):
        trainer = train.Trainer(build, workdir, method)
        try:
            if trainer.ckpt.recover() is None:
                raise FileNotFoundError(f"no checkpoint in {trainer.ckpt.directory}; train first")
            step = trainer.stage_step(idx)
            if step is None:
                raise ValueError(f"stage {names[idx]!r} of {workdir} has no checkpoint (the run stopped before it)")
            best = trainer.ckpt.best_step(idx) == step
            state = trainer.stage_state(idx, trainer.init_variables())
            variables = jax.device_get({"params": state.params, **state.collections})
        finally:
            trainer.close()
    selection = f"best {stages[idx].monitor or config.get('monitor', '')}" if best else "newest of the stage"
    meta = model_meta(config, method, idx, step, selection, workdir)
    return write_model(out, variables, saved, meta, overwrite=overwrite)


def model_meta(config, method, stage_idx: int, step: int, selection: str, source: str) -> dict:
    """model.json's facts of `method`'s stage `stage_idx` trained with `config` (run folder `source`)."""
    inf, stage = method.inference, method.stages(config)[stage_idx]
    return {"created": datetime.datetime.now().isoformat(timespec="seconds"), "source_workdir": source,
            "method_family": config.method_family, "method": config.method, "preset": config.get("preset", ""),
            "stage": stage.name, "stage_index": stage_idx, "step": int(step), "selection": selection,
            "kind": inf.kind, "preprocessing": inf.preprocessing(config), "labels": list(inf.labels(config)),
            "multilabel": bool(inf.multilabel(config)), "map_name": inf.map_name(config, stage),
            "versions": versions(), "facts": run_facts(source, config)}


def write_model(out: str, variables, config_values: dict, meta: dict, overwrite: bool = False) -> str:
    """Writes the model folder (weights, config, model.json, MODEL_CARD.md); returns its path."""
    from gazejax.engine import model_dir

    return model_dir.write(out, variables, json.dumps(config_values, indent=2), meta, model_card(meta),
                           overwrite=overwrite)


def main(argv) -> int:
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's INFO lines would bury the command's own output
    if not _WORKDIR.value or not _OUT.value:
        print("gazejax.export: usage error: --workdir and --out are required", file=sys.stderr)
        return 2
    try:
        path = export(_WORKDIR.value, _OUT.value, _STAGE.value, _OVERWRITE.value)
    except (ValueError, OSError) as e:
        if os.environ.get("GAZEJAX_DEBUG"):
            raise
        print(f"gazejax.export: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"model: {path}")
    return 0


def cli() -> None:
    COMMAND.run(main)


if __name__ == "__main__":
    cli()
