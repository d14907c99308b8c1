"""Experiment runner: every cell of a named grid (a list of config overrides declared next to the config), each in
its own sub-workdir, then paper-style tables and statistics.

  python -m gazejax.experiments --config=configs/brats.py[:preset=paper] --grid=table1 [--workdir=DIR]
      [--dry-run] [--folds=0,1] [--ratios=0.2,0.5] [--seeds=0,1] [--shard=i/n] [--quick]

`--quick` runs a grid's quick size (`get_grid(name, quick=True)`, e.g. a leaderboard that fits a 2-core CPU in
under 45 minutes) where the config declares one.

A cell is finished when its `results.json` exists; finished cells are skipped and unfinished ones resume from their
checkpoints, so a killed sweep continues where it stopped. `--shard=i/n` runs every n-th cell starting at i, so
disjoint shards can run on several machines against a shared workdir. Aggregation (`results.csv`, `tables.md`)
reads whatever cells are finished.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import logging
import os
import sys
from typing import Any

from absl import app, flags

from gazejax.experiments import tables

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with :key=val,... arguments.")
_GRID = flags.DEFINE_string("grid", None, "Name of a grid declared by the config file's get_grid(name).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep folder (default runs/<config>-<grid>).")
_DRY = flags.DEFINE_bool("dry-run", False, "List the cells and exit.")
_FOLDS = flags.DEFINE_list("folds", None, "Restrict data.fold to these values.")
_RATIOS = flags.DEFINE_list("ratios", None, "Restrict data.ratio to these values.")
_SEEDS = flags.DEFINE_list("seeds", None, "Restrict (or set) the seed values.")
_SHARD = flags.DEFINE_string("shard", "0/1", "i/n: run every n-th cell starting at i.")
_AGGREGATE = flags.DEFINE_bool("aggregate-only", False, "Only rebuild results.csv and tables.md.")
_QUICK = flags.DEFINE_bool("quick", False, "The grid's quick size (configs that declare one, e.g. leaderboards).")

log = logging.getLogger("gazejax")


def load_config_module(path: str):
    spec = importlib.util.spec_from_file_location(f"gazejax_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: cannot load config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CELL_KEYS = ("config", "row")  # a cell's own config file (cross-method grids) and its row name: not overrides


def cell_name(overrides: dict[str, Any]) -> str:
    """A stable folder name from the overrides, e.g. method=ours,data.ratio=0.2,data.fold=0 -> ours-r0.2-f0; a cell
    with a "row" (cross-method grids) is named by it and its repeat keys (seed, fold, ratio) only."""
    short = {"row": "", "method": "", "data.ratio": "r", "data.fold": "f", "seed": "s", "data.gaze_readers": "g",
             "model.backbone": "b"}
    parts = []
    keys = ([k for k in ("row", "data.ratio", "data.fold", "seed") if k in overrides] if "row" in overrides
            else list(overrides))
    for key in sorted(keys, key=lambda k: (list(short).index(k) if k in short else 99, k)):
        prefix = short.get(key, key.split(".")[-1] + "=")
        parts.append(f"{prefix}{overrides[key]}")
    return "-".join(parts).replace("/", "_")


def select_cells(cells: list[dict], folds=None, ratios=None, seeds=None) -> list[dict]:
    """Filters cells by fold / ratio / seed (values compared as text, ratios as numbers). `seeds` restricts the
    seeds of cells that name one (e.g. `--seeds=0,1` keeps 2 of a grid's 5 repeats) and repeats each cell that
    names none once per seed, with "seed" set."""
    out = []
    for cell in cells:
        if folds is not None and "data.fold" in cell and str(cell["data.fold"]) not in folds:
            continue
        if ratios is not None and "data.ratio" in cell and float(cell["data.ratio"]) not in map(float, ratios):
            continue
        if seeds is not None and "seed" not in cell:
            out += [{**cell, "seed": int(s)} for s in seeds]
            continue
        if seeds is not None and str(cell["seed"]) not in seeds:
            continue
        out.append(cell)
    return out


def apply_overrides(config, overrides: dict[str, Any]):
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if key in CELL_KEYS:
            continue
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        if last not in node:
            raise KeyError(f"grid override {key!r}: no such config field")
        node[last] = value
    return config


def is_finished(cell_dir: str) -> bool:
    return os.path.exists(os.path.join(cell_dir, "results.json"))


def load_grid(module, path: str, name: str, quick: bool = False) -> dict:
    """The config module's grid `name`, at its quick size with `quick` (an error where it declares none)."""
    if not quick:
        return module.get_grid(name)
    if "quick" not in inspect.signature(module.get_grid).parameters:
        raise ValueError(f"{path}: its grids have no --quick size")
    return module.get_grid(name, quick=True)


def run(config_path: str, config_arg: str | None, grid_name: str, workdir: str, dry_run: bool = False,
        folds=None, ratios=None, seeds=None, shard: str = "0/1", aggregate_only: bool = False,
        quick: bool = False) -> dict:
    module = load_config_module(config_path)
    grid = load_grid(module, config_path, grid_name, quick)
    cells = select_cells(grid["cells"], folds, ratios, seeds)
    index, count = (int(x) for x in shard.split("/"))
    mine = [c for i, c in enumerate(cells) if i % count == index]
    if dry_run:
        for c in cells:
            mark = "done" if is_finished(os.path.join(workdir, "cells", cell_name(c))) else "todo"
            print(f"{cell_name(c)}  [{mark}]  {json.dumps(c)}")
        print(f"{len(cells)} cells ({len(mine)} in shard {shard})")
        return {"cells": cells}
    os.makedirs(workdir, exist_ok=True)
    if not aggregate_only:
        _run_cells(module, config_arg, mine, workdir)
    out = tables.aggregate(workdir, cells, grid, cell_name)
    if "leaderboard" in grid:  # a cross-method grid: every finished cell scored the same way
        from gazejax.experiments import leaderboard

        bases = {None: module.get_config(config_arg)}
        board = leaderboard.build(workdir, cells, grid, cell_name,
                                  lambda cell: apply_overrides(cell_base(bases, cell), cell))
        if board:
            out["markdown"] = board + "\n" + out["markdown"]
    return out


def cell_base(bases: dict, cell: dict):
    """The config a cell starts from: the grid's own (key None), or for a cell with "config" ("configs/ggcam.py:
    method=ggcam,...", relative to the working folder) that file's, loaded once per distinct value into `bases`."""
    key = cell.get("config")
    if key not in bases:
        path, _, arg = key.partition(":")
        bases[key] = load_config_module(path).get_config(arg or None)
    return bases[key]


def _run_cells(module, config_arg, cells, workdir) -> None:
    import jax

    from gazejax import methods
    from gazejax.engine import trainer as train

    # Cells compile the same programs: keep them on disk under the grid's workdir (a cache directory the caller set
    # is kept), and give JAX's settings back afterwards.
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {k: jax.config.values[k] for k in keys}
    if not saved["jax_compilation_cache_dir"]:
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        bases = {None: module.get_config(config_arg)}
        for i, cell in enumerate(cells):
            cell_dir = os.path.join(workdir, "cells", cell_name(cell))
            if is_finished(cell_dir):
                print(f"[{i + 1}/{len(cells)}] {cell_name(cell)}: finished, skipped", flush=True)
                continue
            print(f"[{i + 1}/{len(cells)}] {cell_name(cell)}: running in {cell_dir}", flush=True)
            cell_config = apply_overrides(cell_base(bases, cell), cell)
            train.train_and_evaluate(cell_config, cell_dir, methods.get(cell_config.method_family))
    finally:
        for key, value in saved.items():
            jax.config.update(key, value)


def main(argv) -> int:
    del argv
    logging.getLogger("gazejax").setLevel(logging.INFO)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    if not _CONFIG.value or not _GRID.value:
        raise app.UsageError("--config and --grid are required")
    path, _, arg = _CONFIG.value.partition(":")
    grid = _GRID.value + ("-quick" if _QUICK.value else "")
    workdir = _WORKDIR.value or os.path.join(
        "runs", f"{os.path.splitext(os.path.basename(path))[0]}-{grid}" + (f"-{arg.replace(',', '_')}" if arg else ""))
    try:
        out = run(path, arg or None, _GRID.value, workdir, _DRY.value, _FOLDS.value, _RATIOS.value, _SEEDS.value,
                  _SHARD.value, _AGGREGATE.value, _QUICK.value)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"gazejax.experiments: error: {e}", file=sys.stderr)
        return 1
    if not _DRY.value:
        print(f"tables: {os.path.abspath(os.path.join(workdir, 'tables.md'))}")
        print(out.get("markdown", ""))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
