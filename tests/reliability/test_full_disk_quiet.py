"""A disk that fills up during a checkpoint save ends `python -m gazejax.main` with its one-line error and nothing
else: not the hundreds of "RuntimeError: Event loop is closed" tracebacks of TensorStore's callback threads (through
`sys.unraisablehook`), nor Orbax's and asyncio's logged copies of the error, nor tensorboardX's retries at exit.
The hiding is scoped (a checkpointer's life, a filter `gazejax.main` attaches) and GAZEJAX_DEBUG=1 shows it all."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import types

import pytest

from gazejax.engine import logs
from tests.reliability.full_disk_run import REPO

SCRIPT = os.path.join(REPO, "tests", "reliability", "full_disk_run.py")


def test_a_full_disk_mid_run_prints_the_one_line_error_only_and_keeps_the_checkpoint_before(tmpfs):
    """8 MiB hold the first checkpoint (~5.6 MiB) but not the second. Before: 250 to 1,000 lines of tracebacks
    ("Event loop is closed" by the dozen, Orbax's "Failed to run N Handler Commit operations" and "Save Finalize
    thread failed", asyncio's "Task exception was never retrieved", tensorboardX's atexit flush and dying thread)."""
    from gazejax.engine.checkpoint import Checkpointer

    workdir = tmpfs("8m") / "run"
    env = {k: v for k, v in os.environ.items() if k != "GAZEJAX_DEBUG"}
    proc = subprocess.run([sys.executable, SCRIPT, f"--config={SCRIPT}", f"--workdir={workdir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.fullmatch(r"gazejax: error: cannot write a checkpoint in .*/run/checkpoints: No space left; the "
                        r"checkpoints saved before are intact: .* \(\d+ tracebacks from Orbax's writer threads "
                        r"hidden; GAZEJAX_DEBUG=1 shows them\)", lines[-1]), lines[-1]
    # before it only one-line INFO and WARNING records (e.g. closing the metrics writer failed too) and the progress bar
    others = [line for line in lines[:-1] if not re.match(r"[IW]\d{4} |fit \[", line)]
    assert others == [], others
    ckpt = Checkpointer(str(workdir), keep_last=2, async_save=False)
    try:
        assert ckpt.recover() == 1 and ckpt.latest_step() == 1  # every item of step 1 reads back
    finally:
        ckpt.close()


@pytest.fixture
def quiet():
    """A QuietOrbaxThreadErrors on the "absl" logger, as `gazejax.main` attaches it unless GAZEJAX_DEBUG is set."""
    quiet = logs.QuietOrbaxThreadErrors()
    logging.getLogger("absl").addFilter(quiet)
    yield quiet
    logging.getLogger("absl").removeFilter(quiet)


@pytest.fixture
def previous_hook(monkeypatch):
    """Records what reaches the unraisable hook installed before the checkpointer's."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    return seen


def _unraisable(error: BaseException, obj=None):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__,
                                 err_msg=None, object=obj)


def _loop_closed() -> RuntimeError:
    """The error a TensorStore callback meets: `call_soon_threadsafe` on the event loop Orbax has closed."""
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        return e
    raise AssertionError("a closed loop accepted a callback")


def test_writer_callback_noise_is_counted_and_hidden_and_the_rest_reaches_the_previous_hook(quiet, previous_hook):
    before = sys.unraisablehook
    callbacks = logs.QuietWriterCallbacks()
    nested = logs.QuietWriterCallbacks()
    try:
        hook = sys.unraisablehook
        hook(_unraisable(_loop_closed()))
        hook(_unraisable(ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")))
        assert quiet.dropped == 2 and previous_hook == []
        unrelated = [RuntimeError("something else"), ValueError("INVALID_ARGUMENT: bad shape"),
                     RuntimeError("Event loop is closed")]  # raised elsewhere: no call_soon_threadsafe frame
        for error in unrelated:
            hook(_unraisable(error))
        in_del = _loop_closed()
        hook(_unraisable(in_del, obj=object()))  # from a __del__ or an atexit function: not a writer callback
        assert previous_hook == [*unrelated, in_del] and quiet.dropped == 2
    finally:
        nested.close()
        assert sys.unraisablehook is not before  # the outer checkpointer is still open
        callbacks.close()
        callbacks.close()  # twice is harmless
    assert sys.unraisablehook is before


def test_checkpointers_closed_out_of_order_leave_a_hook_that_passes_everything_on(quiet, previous_hook):
    first, second = logs.QuietWriterCallbacks(), logs.QuietWriterCallbacks()
    first.close()  # the second's hook is current: the first's stays under it and hides nothing any more
    sys.unraisablehook(_unraisable(_loop_closed()))
    assert quiet.dropped == 1 and previous_hook == []
    second.close()
    error = _loop_closed()
    sys.unraisablehook(_unraisable(error))
    assert quiet.dropped == 1 and previous_hook == [error]


def test_without_the_quiet_filter_everything_reaches_the_previous_hook(previous_hook):
    """GAZEJAX_DEBUG=1 (no filter attached) and library use: nothing is hidden."""
    callbacks = logs.QuietWriterCallbacks()
    try:
        error = _loop_closed()
        sys.unraisablehook(_unraisable(error))
    finally:
        callbacks.close()
    assert previous_hook == [error]


def test_asyncio_and_orbax_copies_of_a_write_failure_are_dropped_and_other_errors_kept(quiet):
    def record(logger, message, error):
        return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None,
                                 (type(error), error, None) if error else None)

    full = ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device [os_error_code='28']")
    other = TypeError("cannot serialize object")
    asyncio_log = logging.getLogger("asyncio")
    callbacks = logs.QuietWriterCallbacks()
    try:
        assert not asyncio_log.filter(record("asyncio", "Task exception was never retrieved", full))
        assert asyncio_log.filter(record("asyncio", "Task exception was never retrieved", other))
    finally:
        callbacks.close()
    assert quiet not in asyncio_log.filters
    for message in ("[process=0] Failed to run 5 Handler Commit operations or the Commit callback in background "
                    "save thread, directory: /x/checkpoints/2", "[step=2][wait_until_finished] Save Finalize thread "
                    "(save_finalize) failed."):
        assert not quiet.filter(record("absl", message, full))
        assert quiet.filter(record("absl", message, other))
    assert quiet.dropped == 3


def test_a_metrics_writer_that_fails_to_close_leaves_no_thread_or_exit_hook_behind(tmp_path, monkeypatch):
    """A full disk fails tensorboardX's final flush: before, its writer thread and atexit hook stayed live and each
    printed a traceback at exit (the flush again; "OSError: handle is closed")."""
    from tensorboardX import record_writer

    writer = logs.MetricWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 1.0})
    events = writer._tb.file_writer.event_writer

    def flush(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "flush", flush)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert events._closed and not events._worker.is_alive()
    events.close()  # what the atexit hook calls: nothing left to flush
    writer.close()  # and a second close is a no-op
