"""The tiny end-to-end run of CXRGazeLearn: the real trainer, data, evaluation and report (slow: it compiles the
method's model and steps; `pytest -m "not slow"` skips it)."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from gazejax import methods
from tests.methods.cxrgazelearn.test_cxrgazelearn import _scripted_monitor, _tiny_config

pytestmark = pytest.mark.slow


def test_four_stages_freeze_and_hand_over_best_checkpoints(tmp_path, monkeypatch, fast_compile):
    from gazejax.engine import trainer as train
    from gazejax.engine.checkpoint import abstract_like

    method = _scripted_monitor(methods.get("cxrgazelearn"))
    c = _tiny_config(tmp_path)
    results = train.train_and_evaluate(c, str(tmp_path / "run"), method)
    trainer = train.Trainer(c, str(tmp_path / "run"), method)
    variables = trainer.init_variables()
    by_step, stats = {}, {}
    for step in trainer.ckpt.manager.all_steps():
        meta = trainer.ckpt.restore_meta(step)
        tx = train._stage_tx(c, trainer.stages[meta["stage"]], 1, variables["params"])
        state = trainer.ckpt.restore(step, abstract_like(trainer.new_state(variables, tx)))[0]
        by_step[step] = (meta["stage_name"], jax.tree.map(np.asarray, state.params))
        stats[step] = jax.tree.map(np.asarray, state.collections["batch_stats"])
    trainer.close()
    assert [name for _, (name, _) in sorted(by_step.items())] == ["stage1a", "stage1b", "stage1b", "stage2", "stage3"]
    init, s1a, s1b_best, s1b_last, s2, s3 = [variables["params"]] + [by_step[s][1] for s in sorted(by_step)]
    modules = ("features", "dnet_head", "res_se_unet", "fusion")

    def same(a, b, module):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[module]), jax.tree.leaves(b[module])))

    for before, after, trained in ((init, s1a, {"features"}), (s1b_best, s2, {"res_se_unet"}), (s2, s3, {"fusion"})):
        assert {m for m in modules if not same(before, after, m)} == trained
    assert {m for m in modules if not same(s1a, s1b_best, m)} == {"features", "dnet_head"}
    assert not same(s1b_best, s1b_last, "features")  # stage 2 started from stage 1b's best (its first step)
    # BatchNorm statistics: only the stage's own part moves; frozen parts keep theirs bit-identical (fusion has none)
    st_init, st1a, st1b, _, st2, st3 = [variables["batch_stats"]] + [stats[s] for s in sorted(stats)]
    for before, after, moved in ((st_init, st1a, {"features"}), (st1a, st1b, {"features"}),
                                 (st1b, st2, {"res_se_unet"}), (st2, st3, set())):
        assert {m for m in ("features", "res_se_unet") if not same(before, after, m)} == moved
    assert np.isfinite(results["test"]["metrics"]["cc"]) and set(results["stages"]) == {"stage1b", "stage2"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Table 1" in report and "Table 2" in report and os.path.exists(tmp_path / "run" / "figures" / "fig2.png")
