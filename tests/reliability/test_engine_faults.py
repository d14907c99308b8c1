"""Engine faults on the toy least-squares method (tests/engine/toy.py): a blow-up keeps only checkpoints whose state
produced a finite loss (so the advised rerun with a lower learning rate works), a second run on a busy workdir stops
with one line naming the holder, an incompatible config names the differing fields, a corrupt newest checkpoint
falls back to the newest intact one."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gazejax.engine import checkpoint, trainer as train
from tests.engine import toy


def _steps(workdir):
    ckpt = checkpoint.Checkpointer(workdir, keep_last=2, async_save=False)
    try:
        return sorted(ckpt.manager.all_steps())
    finally:
        ckpt.close()


def test_blow_up_keeps_no_exploded_checkpoint_and_the_advised_rerun_works(tmp_path):
    """Adam at lr 5e18: the first update moves the weights to ~5e18, whose loss overflows to inf. Today that state is
    saved as "the last good checkpoint" (step 1) and the rerun at lr 0.05 resumes from it and fails at once."""
    method = toy.make_method(epochs=2)
    workdir = str(tmp_path / "run")
    with pytest.raises(train.NonFiniteLossError, match=r"after step 0 of stage .fit. has its loss not finite.*no checkpoint kept.*optim.lr") as err:
        train.train_and_evaluate(toy.config(**{"optim.lr": 5e18, "checkpoint.every_steps": 1}), workdir, method)
    assert "\n" not in str(err.value)
    assert _steps(workdir) == []
    results = train.train_and_evaluate(toy.config(**{"checkpoint.every_steps": 1}), workdir, method)
    assert np.isfinite(results["test"]["metrics"]["neg_mse"])
    reference = train.train_and_evaluate(toy.config(**{"checkpoint.every_steps": 1}), str(tmp_path / "fresh"), method)
    assert results["test"]["metrics"] == reference["test"]["metrics"]


def test_nan_mid_run_keeps_the_checkpoints_before_it(tmp_path):
    """A NaN input at step 11: checkpoints 1..10 were verified; the newest kept are 9 and 10 and load finite."""
    method = toy.make_method(epochs=2, poison_after=80)  # 8 examples per step: step 11 gets the NaN
    workdir = str(tmp_path / "run")
    cfg = toy.config(**{"checkpoint.every_steps": 1})
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint: 10"):
        train.train_and_evaluate(cfg, workdir, method)
    assert _steps(workdir)[-2:] == [9, 10]


_HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from gazejax.engine.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _snapshot(workdir):
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    out[os.path.relpath(path, workdir)] = f.read()
    return out


def test_second_run_on_a_busy_workdir_stops_with_the_holder_and_changes_nothing(tmp_path):
    """A live run holds the workdir: the second run raises one line naming its pid and host and writes nothing
    (today both train, mixing metrics.jsonl and leaving an Orbax tmp directory)."""
    import socket
    import subprocess
    import sys

    method, cfg = toy.make_method(epochs=1), toy.config()
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(cfg, workdir, method)
    before = _snapshot(workdir)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=repo), workdir], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match=rf"in use by another run \(pid {holder.pid} on host "
                                          rf"{socket.gethostname()}\)") as err:
            train.train_and_evaluate(toy.config(**{"optim.lr": 0.01}), workdir, method)
        assert "\n" not in str(err.value)
        with pytest.raises(OSError, match=rf"pid {holder.pid}"):
            train.evaluate_only(cfg, workdir, method)
    finally:
        holder.kill()
        holder.wait()
    assert _snapshot(workdir) == before
    # the holder died by SIGKILL: its lock file is stale, and the next run takes the workdir over
    with open(os.path.join(workdir, ".lock")) as f:
        assert json.load(f)["pid"] == holder.pid
    train.evaluate_only(cfg, workdir, method)
    with open(os.path.join(workdir, ".lock")) as f:
        assert json.load(f)["pid"] == os.getpid()


def _wide_method():
    import dataclasses

    import flax.linen as nn

    class Wide(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            return {"y": nn.Dense(1, use_bias=False)(nn.Dense(self.width)(x))[:, 0]}

    return dataclasses.replace(toy.make_method(epochs=1), build_model=lambda c: Wide(c.model.width))


def test_restart_with_an_incompatible_config_names_the_differing_fields(tmp_path):
    """A finished workdir rerun with another model width: one line naming model.width and both values; the saved
    config.json, checkpoints and results stay as they were."""
    method, workdir = _wide_method(), str(tmp_path / "run")
    cfg = toy.config()
    cfg.model.width = 4
    train.train_and_evaluate(cfg, workdir, method)
    before = _snapshot(workdir)
    other = toy.config()
    other.model.width = 8
    for run in (train.train_and_evaluate, train.evaluate_only):
        with pytest.raises(ValueError, match=r"model\.width: 4 in .*config\.json, 8 now") as err:
            run(other, workdir, method)
        assert "\n" not in str(err.value) and len(str(err.value)) < 400
        assert _snapshot(workdir) == before


_DATA_ERROR = """
import dataclasses, sys
sys.path.insert(0, {repo!r})
from gazejax import main
from gazejax.engine import trainer as train
from tests.engine import toy

def make_data(config, process_index=0, process_count=1):
    raise ValueError("/data/brats/BraTS20_001/seg.nii.gz: cut file")

method = dataclasses.replace(toy.make_method(), make_data=make_data)
try:
    train.train_and_evaluate(toy.config(), sys.argv[1], method)
except ValueError as e:
    print(f"gazejax: error: {{e}}", file=sys.stderr)
    sys.exit(1)
"""


def test_after_a_data_error_the_last_line_is_the_error(tmp_path):
    """make_data fails: the error is the last line on stderr (today tensorboardX's atexit hook prints "can't create
    new thread at interpreter shutdown" after it), and no TensorBoard event file is left behind."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", _DATA_ERROR.format(repo=repo), workdir], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == "gazejax: error: /data/brats/BraTS20_001/seg.nii.gz: cut file", proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _corrupt(step_dir, how):
    if how == "array":
        for d in (os.path.join(step_dir, "state", "d"), os.path.join(step_dir, "state", "ocdbt.process_0", "d")):
            for name in os.listdir(d) if os.path.isdir(d) else []:
                _truncate(os.path.join(d, name))
    elif how == "metadata":
        os.remove(os.path.join(step_dir, "state", "_METADATA"))
    else:
        _truncate(os.path.join(step_dir, "meta", "metadata"))


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ref"))
    train.train_and_evaluate(toy.config(), workdir, toy.make_method(epochs=2))
    return workdir


@pytest.mark.parametrize("how", ["array", "metadata", "meta_json"])
def test_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(two_epochs, tmp_path, how, caplog):
    """Step 16 (newest) broken: a warning names it, the run resumes from step 8 and ends with the reference's
    results.json; the broken checkpoint is moved aside, not deleted."""
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(two_epochs, workdir)
    os.remove(os.path.join(workdir, "results.json"))
    _corrupt(os.path.join(workdir, "checkpoints", "16"), how)
    with caplog.at_level("WARNING", logger="gazejax"):
        train.train_and_evaluate(toy.config(), workdir, toy.make_method(epochs=2))
    warnings = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage() and "16" in r.getMessage()]
    assert warnings and "broken" in warnings[0] and "checkpoints_broken" in warnings[0], warnings
    assert os.path.isdir(os.path.join(workdir, "checkpoints_broken", "16"))
    with open(os.path.join(workdir, "results.json"), "rb") as a, open(os.path.join(two_epochs, "results.json"),
                                                                        "rb") as b:
        assert a.read() == b.read()


def test_no_intact_checkpoint_fails_with_one_line(two_epochs, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(two_epochs, workdir)
    for step in ("8", "16"):
        _corrupt(os.path.join(workdir, "checkpoints", step), "array")
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*checkpoints") as err:
        train.train_and_evaluate(toy.config(), workdir, toy.make_method(epochs=2))
    assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_broken_best_checkpoint_fails_with_one_line_naming_it(tmp_path):
    """The stage's best checkpoint (step 24, older than the newest, 48) is unreadable: evaluation stops with one line
    naming it instead of silently scoring another checkpoint (or a 159-line TensorStore traceback)."""
    from tests.reliability import test_resume_best as rb

    workdir = str(tmp_path / "run")
    train.train_and_evaluate(rb.config(), workdir, rb.method())
    _corrupt(os.path.join(workdir, "checkpoints", str(rb.BEST_STEP)), "array")
    with pytest.raises(ValueError, match=rf"checkpoint .*checkpoints/{rb.BEST_STEP} is broken") as err:
        train.evaluate_only(rb.config(), workdir, rb.method())
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_batch_larger_than_the_training_set_is_one_line_naming_it(tmp_path):
    """6 training examples, batch 8: every epoch would have zero full batches. Before, `steps_per_epoch` clamped to
    one step that the iterator (remainder dropped) could never fill."""
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"stage 'fit': training set 'train' has 6 examples, fewer than "
                                         r"batch_size=8") as err:
        train.train_and_evaluate(toy.config(), workdir, toy.make_method(epochs=1, n_train=6))
    assert "\n" not in str(err.value)
    assert _steps(workdir) == []


@pytest.fixture
def full_disk(tmpfs):
    """A 256 KiB tmpfs (see tests/reliability/conftest.py)."""
    return tmpfs("256k")


def test_a_full_disk_is_one_line_naming_the_checkpoint_folder_and_keeps_the_saved_ones(full_disk):
    """Before: a bare "[Errno 28] No space left on device" (or TensorStore's RESOURCE_EXHAUSTED ValueError) with no
    folder named. The checkpoint saved before the disk filled up stays intact and is the one a rerun resumes from."""
    from gazejax.engine.checkpoint import Checkpointer

    ckpt = Checkpointer(str(full_disk / "run"), keep_last=2, async_save=False)
    ckpt.save(1, {"w": np.arange(4, dtype=np.float32)}, {}, {"stage": 0})
    ckpt.wait()
    with pytest.raises(OSError, match=r"^cannot write a checkpoint in .*/run/checkpoints: No space left; the "
                                      r"checkpoints saved before are intact") as err:
        noise = np.random.default_rng(0).random(1 << 20, dtype=np.float32)  # 4 MiB that do not compress
        ckpt.save(2, {"w": noise}, {}, {"stage": 0})
        ckpt.wait()
    assert "\n" not in str(err.value)
    reopened = Checkpointer(str(full_disk / "run"), keep_last=2, async_save=False)
    try:
        assert reopened.recover() == 1
        np.testing.assert_array_equal(reopened.manager.restore(1).state["w"], np.arange(4, dtype=np.float32))
    finally:
        reopened.close()


def test_orbax_thread_copies_of_an_error_are_dropped_and_counted():
    import logging

    from gazejax.engine.logs import QuietOrbaxThreadErrors

    quiet = QuietOrbaxThreadErrors()
    dropped = logging.LogRecord("absl", logging.ERROR, __file__, 1, "[process=0][thread=x] _SignalingThread.run() "
                                "raised an exception: [Errno 28] No space left on device", None, None)
    kept = logging.LogRecord("absl", logging.ERROR, __file__, 1, "something else", None, None)
    assert (quiet.filter(dropped), quiet.filter(kept), quiet.dropped) == (False, True, 1)


def test_a_failure_to_close_does_not_replace_the_error_that_stopped_the_run(tmp_path, monkeypatch, caplog):
    """A full disk stops the run (here: make_data fails), and closing the TensorBoard writer then fails on the same
    disk: the run's own error reaches the user, the close failure is one warning. Before, the writer's OSError
    replaced it (`[Errno 28] No space left on device` instead of the checkpoint folder's message)."""
    import dataclasses

    from gazejax.engine import logs

    method = toy.make_method()

    def make_data(config, process_index=0, process_count=1):
        raise ValueError("/data/toy.csv: cut file")

    def close(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logs.MetricWriter, "close", close)
    with caplog.at_level("WARNING", logger="gazejax"):
        with pytest.raises(ValueError, match="^/data/toy.csv: cut file$"):
            train.train_and_evaluate(toy.config(), str(tmp_path / "run"),
                                     dataclasses.replace(method, make_data=make_data))
    assert ("closing the TensorBoard / metrics writer after the error below failed too: [Errno 28] No space"
            in caplog.text)
    with pytest.raises(OSError, match="No space left"):  # with no error before, a close failure is the error
        train.train_and_evaluate(toy.config(), str(tmp_path / "run2"), method)
