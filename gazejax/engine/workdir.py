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
