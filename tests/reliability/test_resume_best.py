"""An interrupted and resumed run ends like an uninterrupted one with the same seed: the same best step, the same
results.json and report, after SIGTERM and after kill -9 (here: during a validation), also when the best checkpoint
of the stage was written before the interruption and only the newest `checkpoint.keep` = 1 others are kept."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gazejax.engine import checkpoint, trainer as train
from tests.conftest import sigterm_at_step
from tests.engine import toy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# val mse per epoch at lr 0.02 (6 epochs of 8 steps): 1.43 1.15 0.94 0.76 0.62 0.50; the score -|mse - 1| peaks at
# epoch 3 (step 24), so the best checkpoint is written well before the end and before the interruptions below.
BEST_STEP = 24


def method():
    base = toy.make_method(epochs=6)

    def evaluate(predict, split, config, out_dir=None, stage=None):
        out = base.evaluate(predict, split, config, out_dir, stage)
        out["metrics"]["score"] = -abs(-out["metrics"]["neg_mse"] - 1.0)
        return out

    from gazejax.engine.api import Stage
    return dataclasses.replace(base, evaluate=evaluate,
                               stages=lambda c: [Stage("fit", epochs=6, monitor="val/score")])


def config():
    return toy.config(**{"optim.lr": 0.02, "checkpoint.keep": 1})


def _best_step(workdir):
    ckpt = checkpoint.Checkpointer(workdir, keep_last=1, async_save=False)
    try:
        return ckpt.best_step(0), sorted(ckpt.manager.all_steps())
    finally:
        ckpt.close()


def _read(workdir, name):
    with open(os.path.join(workdir, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("full"))
    train.train_and_evaluate(config(), workdir, method())
    return workdir


def test_uninterrupted_keeps_the_early_best(reference):
    best, steps = _best_step(reference)
    assert best == BEST_STEP and steps == [BEST_STEP, 48]


def test_sigterm_after_the_best_resumes_to_the_same_results(reference, tmp_path, monkeypatch):

    workdir = str(tmp_path / "run")
    original = sigterm_at_step(monkeypatch, 34)
    with pytest.raises(train.Preempted, match="SIGTERM at step 34"):
        train.train_and_evaluate(config(), workdir, method())
    monkeypatch.setattr(train.ProgressBar, "update", original)
    train.train_and_evaluate(config(), workdir, method())
    assert _best_step(workdir) == _best_step(reference)
    assert _read(workdir, "results.json") == _read(reference, "results.json")
    assert _read(workdir, "report.md") == _read(reference, "report.md")


_KILLED = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from gazejax.engine import trainer as train
    from tests.reliability import test_resume_best as t
    original = train.Trainer._validate
    def validate_then_kill(self, stage, state, data, global_step, meta):
        out = original(self, stage, state, data, global_step, meta)
        if global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    train.Trainer._validate = validate_then_kill
    train.train_and_evaluate(t.config(), sys.argv[1], t.method())
""")


_KILLED_SAVING = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import orbax.checkpoint as ocp
    from gazejax.engine import trainer as train
    from tests.reliability import test_resume_best as t
    original, calls = ocp.JsonCheckpointHandler.async_save, []
    def async_save_then_kill(self, directory, *a, **kw):
        calls.append(str(directory))
        if len(calls) == {kill_at}:  # two JSON items per checkpoint: the {kill_at}th is half-way into a save
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, directory, *a, **kw)
    ocp.JsonCheckpointHandler.async_save = async_save_then_kill
    train.train_and_evaluate(t.config(), sys.argv[1], t.method())
""")


@pytest.mark.parametrize("kill_at", [8, 9])
def test_kill9_during_a_save_resumes_to_the_same_results(reference, tmp_path, kill_at):
    """kill -9 inside the 4th checkpoint's write (step 32; after its state, before its meta item) or as the 5th
    begins: the half-written checkpoint is discarded, and the rerun ends with the same bytes as the reference."""
    workdir = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVING.format(repo=REPO, kill_at=kill_at), workdir],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    train.train_and_evaluate(config(), workdir, method())
    assert _best_step(workdir) == _best_step(reference)
    assert _read(workdir, "results.json") == _read(reference, "results.json")
    assert [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))] == \
        [json.loads(line)["step"] for line in open(os.path.join(reference, "metrics.jsonl"))]


@pytest.mark.parametrize("kill_at", [32, 40])
def test_kill9_during_validation_resumes_to_the_same_results(reference, tmp_path, kill_at):
    """kill -9 after the validation of step `kill_at` and before its checkpoint: the rerun restarts from the
    previous checkpoint, repeats the steps and ends with the same bytes; metrics.jsonl holds each step once."""
    workdir = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", _KILLED.format(repo=REPO, kill_at=kill_at), workdir], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    train.train_and_evaluate(config(), workdir, method())
    assert _best_step(workdir) == _best_step(reference)
    assert _read(workdir, "results.json") == _read(reference, "results.json")
    assert _read(workdir, "report.md") == _read(reference, "report.md")
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    want = [json.loads(line)["step"] for line in open(os.path.join(reference, "metrics.jsonl"))]
    assert steps == want
