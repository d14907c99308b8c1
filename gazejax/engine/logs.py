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
import time
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
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class QuietOrbaxThreadErrors(logging.Filter):
    """Orbax logs a failed background write (a full disk) with its traceback at ERROR and raises the same error in
    the training loop, which `gazejax.main` reports in one line: the logged copies are dropped and counted."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "_SignalingThread.run() raised an exception" in record.getMessage():
            self.dropped += 1
            return False
        return True


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
