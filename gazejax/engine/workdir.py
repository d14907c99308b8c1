"""An exclusive lock on a run's workdir, so two runs never write one workdir's checkpoints and metrics at once.

`<workdir>/.lock` is held with `fcntl.flock` for the life of the run and names the holder (pid and host). The kernel
drops the lock when the holder exits in any way (kill -9 included), so a lock file left by a dead process is
reclaimed by the next run without asking. Only process 0 of a multi-process run takes it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket


class WorkdirBusyError(OSError):
    """Another live run holds the workdir."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the lock, or raises WorkdirBusyError naming the holder."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, ".lock")
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        if not self.enabled:
            return self
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirBusyError(f"workdir {os.path.dirname(os.path.abspath(self.path))} is in use by another run "
                                   f"(pid {holder.get('pid', '?')} on host {holder.get('host', '?')}); wait for it "
                                   f"to finish or choose another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


class IncompatibleConfigError(ValueError):
    """The workdir's checkpoints do not fit this run's config."""


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def read_config(workdir: str) -> dict | None:
    """The run's saved `config.json` as a dict, or None when there is none (or it does not parse)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def incompatible(workdir: str, saved: dict | None, config, error: Exception) -> IncompatibleConfigError:
    """The one-line error for a checkpoint that `config` cannot restore: the fields that differ from `saved`."""
    path = os.path.join(os.path.abspath(workdir), "config.json")
    first = " ".join(str(error).split())[:200]
    if saved is None:
        return IncompatibleConfigError(f"cannot restore the checkpoints in {workdir} with this config ({first}); "
                                       f"use the config they were written with or another --workdir")
    old, new = _flatten(saved), _flatten(json.loads(config.to_json_best_effort()))
    diff = [f"{k}: {old.get(k, '(absent)')} in {path}, {new.get(k, '(absent)')} now"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
    return IncompatibleConfigError(f"cannot resume {workdir}: its checkpoints were written with another config "
                                   f"({shown or 'no field differs; ' + first}); use that config or another --workdir")


def save_config(config, workdir: str) -> str | None:
    """Writes `config` (a ConfigDict or the text of a config.json) to config.json; returns the text it replaced."""
    import jax

    from gazejax.data import io

    path, old = os.path.join(workdir, "config.json"), None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if jax.process_index() == 0 and config is not None:
        io.write_text(path, config if isinstance(config, str) else config.to_json_best_effort(indent=2))
    return old
