"""`python -m gazejax.main` with bad flags or config values: one line on stderr naming the field or file, exit
status 2, no traceback, and nothing written to the workdir."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [
    (["--config=configs/brats.py", "--config.no_such_field=1"], "unknown config field in a --config.* override: "
                                                                 "no_such_field"),
    (["--config=configs/brats.py:preset=nope"], "unknown preset 'nope'"),
    (["--config=configs/brats.py:bogus=1"], "unknown config argument 'bogus'"),
    (["--config=configs/missing.py"], "cannot load the config file: [Errno 2] No such file or directory"),
    (["--config=configs/brats.py", "--config.batch_size=0"], "config.batch_size must be >= 1, got 0"),
    (["--config=configs/brats.py", "--config.batch_size=abc"], "flag --config.batch_size=abc"),
    (["--config=configs/brats.py", "--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[1][:30] for c in CASES])
def test_usage_errors_are_one_line_with_status_2(tmp_path, args, message):
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "GAZEJAX_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "gazejax.main", *args, f"--workdir={workdir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("gazejax: usage error: ") and message in lines[0], lines
    assert not workdir.exists()


def _main_cli(workdir) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The README main command with `workdir`: the finished process and its non-empty stderr lines."""
    env = {k: v for k, v in os.environ.items() if k != "GAZEJAX_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "gazejax.main", "--config=configs/brats.py", f"--workdir={workdir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc, [line for line in proc.stderr.splitlines() if line.strip()]


def test_an_unwritable_workdir_is_one_line_with_status_1(tmp_path):
    """A workdir that cannot be created (its parent is a file; chmod does not stop root, who runs CI): one line
    naming the path, exit status 1, and the file in the way is left as it was."""
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    workdir = blocker / "run"
    proc, lines = _main_cli(workdir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("gazejax: error: ") and str(workdir) in lines[0], lines
    assert blocker.read_text() == "keep me"


def test_a_workdir_orbax_cannot_read_back_is_refused_before_anything_is_written(tmp_path):
    """TensorStore writes arrays under a path with '[' but cannot read them back: the run used to train an epoch
    and then stop on a "broken" checkpoint. Now: one line naming the path, exit status 1, nothing written; the
    model folder of an export is checked the same way."""
    from gazejax.engine import model_dir

    workdir = tmp_path / "run[1]"
    proc, lines = _main_cli(workdir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and str(workdir) in lines[0] and "cannot hold Orbax checkpoints" in lines[0], lines
    assert not workdir.exists()
    with pytest.raises(ValueError, match="the model folder cannot hold Orbax checkpoints"):
        model_dir.write(str(tmp_path / "m\\1"), {"params": {}}, "{}", {}, "")
    assert not (tmp_path / "m\\1").exists()
