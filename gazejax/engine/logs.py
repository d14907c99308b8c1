"""Run logs: TensorBoard event files (tensorboardX, no TensorFlow), a JSON-lines metrics file, a progress bar.

Only process 0 writes; other processes get no-op writers so call sites need no `if process_index == 0`, and
`quiet_other_processes` keeps their Python INFO lines off the terminal (each would repeat once per host).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, Mapping

import jax


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class MetricWriter:
    """Writes scalars to `<workdir>/tensorboard` and one JSON object per call to `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._tb_dir = os.path.join(workdir, "tensorboard")

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._tb is None:  # opened at the first write: a run that fails before training leaves no event file
            from tensorboardX import SummaryWriter

            os.makedirs(self._tb_dir, exist_ok=True)
            self._tb = SummaryWriter(self._tb_dir)
        row = {"step": int(step), "time": time.time()}
        for key, value in scalars.items():
            val = _to_float(value)
            row[key] = val if math.isfinite(val) else str(val)
            if math.isfinite(val):  # TensorBoard gets finite values only (e.g. no std of a single case)
                self._tb.add_scalar(key, val, int(step))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rewind(self, step: int) -> int:
        """Drops the metrics.jsonl rows after `step` (written after the newest checkpoint by a killed run, which the
        resumed run writes again); returns how many were dropped. The file is replaced atomically."""
        if not self.enabled or not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
            logging.getLogger("gazejax").warning("metrics.jsonl: dropped %d rows written after step %d (the newest "
                                                 "checkpoint), which this run repeats", len(lines) - len(kept), step)
        return len(lines) - len(kept)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        tb, self._tb = self._tb, None
        if tb is None:
            return
        try:
            tb.close()
        except OSError:
            _abandon(tb)
            raise


def _abandon(tb) -> None:
    """After a failed close (its flush on a full disk): stops tensorboardX's writer thread and closes its file
    without flushing again. Left as they are, its atexit hook retries the flush and its thread dies at exit, each
    printing a traceback after the run's one-line error."""
    for file_writer in (tb.all_writers or {}).values():
        events = file_writer.event_writer
        if getattr(events, "_closed", True):
            continue
        events._worker.stop()
        try:
            events._ev_writer._py_recordio_writer.close()  # the buffered write fails again, the file is closed
        except OSError:
            pass
        events._event_queue.close()
        events._closed = True


WRITE_FAILURES = ("No space left", "Read-only file system", "Permission denied", "Disk quota exceeded")
# What Orbax logs, with the traceback, for one failed background write before raising it in the training loop, and
# what asyncio logs for each of the failed write's other coroutines when the task is garbage-collected
_ORBAX_COPIES = ("_SignalingThread.run() raised an exception", "Handler Commit operations or the Commit callback",
                 "Save Finalize thread", "exception was never retrieved")


def error_chain(error: BaseException):
    """`error` and the errors it was raised from or while handling (TensorStore's ValueError from an OSError, ...)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def write_failure(error: BaseException | str) -> str | None:
    """Which of WRITE_FAILURES the text `error`, or an error or one it came from, names; None if none."""
    texts = [error] if isinstance(error, str) else [str(e) for e in error_chain(error)]
    text = " ".join(" ".join(texts).split())
    return next((reason for reason in WRITE_FAILURES if reason in text), None)


class QuietOrbaxThreadErrors(logging.Filter):
    """Orbax logs a failed background write (a full disk) with its traceback at ERROR, once per thread it passes
    through, and raises the same error in the training loop, which `gazejax.main` reports in one line: the logged
    copies are dropped and counted. While a `QuietWriterCallbacks` is open, so are the "Event loop is closed"
    tracebacks of TensorStore's callbacks that the same failure leaves behind (see there)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0
        self._lock = threading.Lock()  # the callbacks count from TensorStore's threads

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(copy in message for copy in _ORBAX_COPIES):
            error = record.exc_info[1] if record.exc_info else None
            if write_failure(message) or (error is not None and write_failure(error)):
                self.count()
                return False
        return True

    def count(self) -> None:
        with self._lock:
            self.dropped += 1

    @classmethod
    def attached(cls, logger_name: str = "absl") -> "QuietOrbaxThreadErrors | None":
        """The instance filtering `logger_name` (where Orbax logs), if any: `gazejax.main` adds one unless
        GAZEJAX_DEBUG is set."""
        return next((f for f in logging.getLogger(logger_name).filters if isinstance(f, cls)), None)


def _is_writer_callback_noise(unraisable) -> bool:
    """A failed write's fallout in TensorStore's threads: Orbax closes its event loop on the first failed write,
    and each write still in flight then completes into `loop.call_soon_threadsafe`, which raises "Event loop is
    closed" (hundreds on a full disk). They reach `sys.unraisablehook` with no object (a C++ callback, not a
    `__del__` or an atexit function), as does a write failure raised in such a callback."""
    if unraisable.object is not None:
        return False
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        frames = traceback.extract_tb(unraisable.exc_traceback)
        return any(frame.name == "call_soon_threadsafe" for frame in frames)
    return isinstance(error, (OSError, ValueError)) and write_failure(error) is not None


class QuietWriterCallbacks:
    """For the life of a checkpointer, the fallout of a failed write outside Orbax's own logs goes to the attached
    `QuietOrbaxThreadErrors`, which counts and hides it: TensorStore's callback noise (`_is_writer_callback_noise`,
    through `sys.unraisablehook`) and asyncio's "Task exception was never retrieved" for the failed write's other
    coroutines (logger "asyncio"). With none attached (GAZEJAX_DEBUG=1, library use), and for every other error, the
    previous hook and handlers run as before. `close` restores the previous hook, or where another was installed
    over this one since, leaves this one passing everything on."""

    def __init__(self) -> None:
        self._open = True
        self._previous, sys.unraisablehook = sys.unraisablehook, self._hook
        quiet = QuietOrbaxThreadErrors.attached()
        self._asyncio_filter = None if quiet is None else (lambda record: quiet.filter(record))
        if self._asyncio_filter is not None:
            logging.getLogger("asyncio").addFilter(self._asyncio_filter)

    def _hook(self, unraisable) -> None:
        quiet = QuietOrbaxThreadErrors.attached() if self._open else None
        if quiet is not None and _is_writer_callback_noise(unraisable):
            quiet.count()
            return
        self._previous(unraisable)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous
        if self._asyncio_filter is not None:
            logging.getLogger("asyncio").removeFilter(self._asyncio_filter)


def quiet_other_processes(logger_name: str = "gazejax") -> None:
    """On every process but 0, lowers `logger_name` to warnings and errors (call after jax.distributed starts)."""
    if jax.process_index() != 0:
        logging.getLogger(logger_name).setLevel(logging.WARNING)


def read_metrics(workdir: str) -> list[dict]:
    """All rows of `<workdir>/metrics.jsonl` (a resumed run appends; later rows of a step win in plots)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: skip it, keep the rest
                    continue
    return rows


class ProgressBar:
    """A one-line terminal progress bar with step rate and ETA (stderr; silent when not process 0)."""

    def __init__(self, total: int, start: int = 0, desc: str = "train", enabled: bool | None = None,
                 stream=None):
        self.total, self.count, self.desc = total, start, desc
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.stream = stream or sys.stderr
        self._t0, self._n0 = time.perf_counter(), start
        self._last_print = 0.0
        self._is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        now = time.perf_counter()
        if not self.enabled:
            return
        interval = 0.2 if self._is_tty else 10.0
        if now - self._last_print < interval and self.count < self.total:
            return
        self._last_print = now
        done = self.count - self._n0
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - self.count) / rate if rate > 0 else float("inf")
        frac = self.count / max(self.total, 1)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        line = (f"{self.desc} [{bar}] {self.count}/{self.total} {rate:.2f} it/s "
                f"ETA {_fmt_seconds(eta)} {extras}")
        end = "\r" if self._is_tty and self.count < self.total else "\n"
        self.stream.write(line + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._is_tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_seconds(sec: float) -> str:
    if not math.isfinite(sec):
        return "?"
    sec = int(sec)
    return f"{sec // 3600:d}:{sec % 3600 // 60:02d}:{sec % 60:02d}"
