"""The experiment runner: grid listing, skipping finished cells after a kill, resuming, tables and statistics."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gazejax.experiments import runner as experiments

CONFIG = '''
import ml_collections

def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.method_family = "san_aab"
    c.method = "backbone"
    c.seed = 0
    c.data = ml_collections.ConfigDict({"ratio": 1.0, "fold": 0})
    return c

def get_grid(name):
    cells = [{"method": m, "data.ratio": r, "data.fold": f} for m in ("backbone", "ours") for r in (0.2, 0.5)
             for f in (0, 1, 2)]
    return {"cells": cells, "tables": [{"title": "T", "row": "method", "col": "data.ratio",
            "metrics": (("dice_WT", "WT"),), "reference": "backbone"}]}
'''


def _fake_training(calls, fail_on=None):
    def train_and_evaluate(config, workdir, method):
        from gazejax import methods

        assert method is methods.get(config.method_family)  # the runner hands the trainer the cell's Method
        name = os.path.basename(workdir)
        calls.append(name)
        if name == fail_on:
            raise KeyboardInterrupt  # the sweep is killed while this cell runs
        os.makedirs(workdir, exist_ok=True)
        base = 0.7 + (0.1 if config.method == "ours" else 0.0) + 0.01 * config.data.fold
        step = 0.013 if config.method == "ours" else 0.01  # paired differences vary across cases
        cases = {f"case{config.data.fold}_{i}": {"dice_WT": base + step * (i - 1.5)} for i in range(4)}
        with open(os.path.join(workdir, "cases.json"), "w") as f:
            json.dump({"test": cases}, f)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"test": {"dice_WT": float(np.mean([c["dice_WT"] for c in cases.values()]))}}, f)
        return {}
    return train_and_evaluate


@pytest.fixture
def restore_jax_cache_config():
    """The runner points JAX's compilation cache into its workdir: put the session's setting back afterwards."""
    import jax

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {k: jax.config.values[k] for k in keys}
    yield
    for key, value in saved.items():
        jax.config.update(key, value)


def test_kill_and_restart_skips_finished_cells(tmp_path, monkeypatch, capsys, restore_jax_cache_config):
    import jax

    from gazejax.engine import trainer as train

    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG)
    workdir = str(tmp_path / "sweep")
    out = experiments.run(str(cfg), None, "t", workdir, dry_run=True)
    assert len(out["cells"]) == 12 and "12 cells" in capsys.readouterr().out

    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls, fail_on="ours-r0.2-f0"))
    seen = []
    monkeypatch.setattr(jax.config, "update", _recording(jax.config.update, seen))
    jax.config.update("jax_compilation_cache_dir", None)  # no cache set by the caller
    with pytest.raises(KeyboardInterrupt):
        experiments.run(str(cfg), None, "t", workdir)
    assert len(calls) == 7  # 6 backbone cells finished, killed in the 7th
    assert ("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache")) in seen  # used while the cells ran
    assert jax.config.values["jax_compilation_cache_dir"] is None  # and given back, even after the kill
    jax.config.update("jax_compilation_cache_dir", "/elsewhere/cache")
    seen.clear()

    calls.clear()
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    out = experiments.run(str(cfg), None, "t", workdir)
    assert calls == ["ours-r0.2-f0", "ours-r0.2-f1", "ours-r0.2-f2", "ours-r0.5-f0", "ours-r0.5-f1",
                     "ours-r0.5-f2"]  # finished cells skipped, the killed one rerun (it resumes from checkpoints)
    assert out["finished"] == 12
    tables = open(os.path.join(workdir, "tables.md")).read()
    # backbone at ratio 0.2: fold means 0.70, 0.71, 0.72 -> 71.00 (0.010)
    assert "71.00 (0.010)" in tables and "81.00 (0.010)" in tables
    assert "paired t-test" in tables and "n=12" in tables
    rows = open(os.path.join(workdir, "results.csv")).read().splitlines()
    assert len(rows) == 1 + 12

    assert not [v for k, v in seen if k == "jax_compilation_cache_dir" and v != "/elsewhere/cache"]  # caller's kept
    assert jax.config.values["jax_compilation_cache_dir"] == "/elsewhere/cache"

    calls.clear()
    experiments.run(str(cfg), None, "t", workdir)
    assert calls == []  # everything finished: nothing reruns


def _recording(update, seen):
    def record(key, value):
        seen.append((key, value))
        update(key, value)
    return record


def test_filters_and_shards(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG)
    module = experiments.load_config_module(str(cfg))
    cells = experiments.select_cells(module.get_grid("t")["cells"], folds=["0", "1"], ratios=["0.5"])
    assert len(cells) == 4 and all(c["data.ratio"] == 0.5 and c["data.fold"] in (0, 1) for c in cells)
    names = {experiments.cell_name(c) for c in module.get_grid("t")["cells"]}
    assert len(names) == 12
    with pytest.raises(KeyError, match="no such config field"):
        experiments.apply_overrides(module.get_config(), {"data.nope": 1})


def test_brats_grids_have_the_papers_sizes():
    module = experiments.load_config_module("configs/brats.py")
    assert len(module.get_grid("table1")["cells"]) == 120
    assert len(module.get_grid("table2")["cells"]) == 20
    assert len(module.get_grid("table3")["cells"]) == 80
    base = module.get_config("preset=demo")
    for cell in module.get_grid("table3")["cells"][:3]:
        experiments.apply_overrides(base, cell)  # every override names a real config field


def test_seeds_restrict_or_repeat_cells():
    cells = [{"method": "a", "seed": s} for s in range(5)] + [{"method": "b"}]
    out = experiments.select_cells(cells, seeds=["0", "1"])
    assert out == [{"method": "a", "seed": 0}, {"method": "a", "seed": 1}, {"method": "b", "seed": 0},
                   {"method": "b", "seed": 1}]
    assert experiments.select_cells(cells) == cells


def test_tables_show_three_decimals_medians_and_anova(tmp_path):
    from scipy.stats import f_oneway

    from gazejax.experiments import tables as experiments_tables

    values = {"plain": [0.701, 0.742, 0.733], "ours": [0.812, 0.79, 0.845]}
    cells = [{"method": m, "seed": s} for m in values for s in range(3)]
    for cell in cells:
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        value = values[cell["method"]][cell["seed"]]
        (folder / "results.json").write_text(json.dumps({"test": {"auroc": value, "dice_WT": value}}))
    grid = {"cells": cells, "tables": [{"title": "T", "row": "method", "median": True,
                                        "metrics": (("auroc", "AUROC"), ("dice_WT", "WT"))}]}
    md = experiments_tables.aggregate(str(tmp_path), cells, grid, experiments.cell_name)["markdown"]
    # by hand: plain mean 0.7253, sample std 0.0216, median 0.733; ours mean 0.8157, std 0.0277, median 0.812
    assert "| plain | 0.725 (0.022) [median 0.733] | 72.53 (0.022) [median 73.30] |" in md
    assert "| ours | 0.816 (0.028) [median 0.812] | 81.57 (0.028) [median 81.20] |" in md
    p = f_oneway(values["plain"], values["ours"]).pvalue
    assert f"p={p:.4g}" in md and "plain 0.733, ours 0.812" in md and "[median] where shown" in md
    assert experiments_tables._fmt([0.5], 1.0, 3) == "0.500" and experiments_tables._fmt([None], 1.0) == "n/a"


def test_a_table_can_read_its_own_split(tmp_path):
    """A table with "split" reads that key of results.json (e.g. a stage's test scores), others the grid's."""
    from gazejax.experiments import tables as experiments_tables

    cells = [{"method": m, "seed": s} for m in ("a", "b") for s in range(2)]
    for cell in cells:
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        base = 0.6 if cell["method"] == "a" else 0.9
        (folder / "results.json").write_text(json.dumps({"test": {"auroc": base},
                                                         "test@finetune": {"auroc": base - 0.5}}))
    tables = [{"title": "default", "row": "method", "metrics": (("auroc", "AUROC"),), "stats": False},
              {"title": "stage", "row": "method", "metrics": (("auroc", "AUROC"),), "stats": False,
               "split": "test@finetune"}]
    md = experiments_tables.aggregate(str(tmp_path), cells, {"cells": cells, "tables": tables},
                                      experiments.cell_name)["markdown"]
    default, stage = md.split("## stage")
    assert "| a | 0.600 (0.000) |" in default and "| b | 0.900 (0.000) |" in default
    assert "Values: test@finetune split." in stage
    assert "| a | 0.100 (0.000) |" in stage and "| b | 0.400 (0.000) |" in stage


def test_anova_text_without_spread():
    from gazejax.experiments.tables import _anova_text

    assert _anova_text([[1.0, 1.0], [1.0, 1.0]]).startswith("n/a (every repeat")
    assert _anova_text([[1.0, 1.0], [0.9, 0.9]]).startswith("F=inf, p=0")
    assert _anova_text([[1.0], [0.9, 0.8]]).startswith("n/a (needs >= 2")
    assert _anova_text([[0.1, 0.3], [0.5, 0.7]]) == "F=8.000, p=0.1056"  # by hand: MSB 0.16 / MSW 0.02


def test_leaderboard_grid_quick_size_and_cost_table(tmp_path):
    """configs/brats.py's leaderboard: 12 variants x 5 folds, --quick the 7 EquiUnet variants x 3 folds (one fold
    set for every row), every override a real config field; the cost table reads each cell's run.json."""
    from gazejax.experiments import tables as experiments_tables

    module = experiments.load_config_module("configs/brats.py")
    full, quick = module.get_grid("leaderboard"), experiments.load_grid(module, "configs/brats.py", "leaderboard",
                                                                        quick=True)
    assert len(full["cells"]) == 60 and len(quick["cells"]) == 21
    assert {c["data.fold"] for c in quick["cells"]} == {0, 1, 2} and {c["data.ratio"] for c in full["cells"]} == {0.5}
    base = module.get_config("preset=demo")
    for cell in full["cells"]:
        experiments.apply_overrides(base, cell)
    with pytest.raises(ValueError, match="no --quick size"):
        experiments.load_grid(module, "configs/brats.py", "table1", quick=True)
    toy = experiments.load_config_module(_write_config(tmp_path))
    with pytest.raises(ValueError, match="its grids have no --quick size"):
        experiments.load_grid(toy, "toy.py", "t", quick=True)

    cells = [c for c in quick["cells"] if c["method"] in ("backbone", "ours")]
    for i, cell in enumerate(cells):
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"test": {"dice_WT": 0.8}}))
        (folder / "run.json").write_text(json.dumps({"params": 1000 if cell["method"] == "backbone" else 1500,
                                                     "train_seconds": 60.0 + i}))
    md = experiments_tables.aggregate(str(tmp_path), cells, {**quick, "cells": cells},
                                      experiments.cell_name)["markdown"]
    cost = md.split("## Cost")[1]
    assert "| equiunet Backbone | 1000 (0.000) | 61 (1.000) |" in cost  # train_seconds 60, 61, 62
    assert "| equiunet ours | 1500 (0.000) | 64 (1.000) |" in cost


def _write_config(tmp_path) -> str:
    path = tmp_path / "toy.py"
    path.write_text(CONFIG)
    return str(path)


def test_paired_tests_and_anova_with_tuple_rows_and_rows_without_the_metric(tmp_path):
    """A table whose row is a tuple of keys (backbone, method) pairs each row's cases with the reference's (was
    "n/a": the tuple was compared as one key), and a row without the metric (a gaze-free backbone has no gaze CC)
    is left out of the ANOVA instead of voiding it."""
    from scipy.stats import f_oneway, ttest_rel

    from gazejax.experiments import tables as experiments_tables

    dice = {"backbone": {0: [0.8, 0.7], 1: [0.6, 0.9]}, "ours": {0: [0.85, 0.72], 1: [0.7, 0.91]},
            "tasn": {0: [0.5, 0.6], 1: [0.55, 0.4]}}
    cells = [{"model.backbone": "equiunet", "method": m, "data.fold": f} for m in dice for f in (0, 1)]
    for cell in cells:
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        m, f = cell["method"], cell["data.fold"]
        cases = {f"case{f}_{i}": {"dice_WT": v, **({"gaze_cc": v / 2} if m != "backbone" else {})}
                 for i, v in enumerate(dice[m][f])}
        metrics = {"dice_WT": float(np.mean(dice[m][f])), **({"gaze_cc": float(np.mean(dice[m][f])) / 2}
                                                             if m != "backbone" else {})}
        (folder / "results.json").write_text(json.dumps({"test": metrics}))
        (folder / "cases.json").write_text(json.dumps({"test": cases}))
    spec = {"title": "T", "row": ("model.backbone", "method"), "metrics": (("dice_WT", "WT"), ("gaze_cc", "CC")),
            "reference": ("equiunet", "backbone")}
    md = experiments_tables.aggregate(str(tmp_path), cells, {"cells": cells, "tables": [spec]},
                                      experiments.cell_name)["markdown"]
    ours = [v for f in (0, 1) for v in dice["ours"][f]]
    base = [v for f in (0, 1) for v in dice["backbone"][f]]
    t = ttest_rel(ours, base)
    assert f"('equiunet', 'ours'): t={t.statistic:.3f}, p={t.pvalue:.4g}, n=4" in md
    cc = {m: [float(np.mean(dice[m][f])) / 2 for f in (0, 1)] for m in ("ours", "tasn")}
    assert f"F={f_oneway(cc['ours'], cc['tasn']).statistic:.3f}" in md.split("\n| CC |")[1]
