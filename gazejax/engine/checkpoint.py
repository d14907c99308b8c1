"""Orbax checkpoints of the train state, the data-iterator state and run metadata, with resume and preemption.

One CheckpointManager in `<workdir>/checkpoints` keeps the last N steps plus, for every stage, the step with the
best value of that stage's monitored validation metric. Saves are asynchronous and atomic (Orbax writes into a
temporary directory and renames), so a killed run never leaves a half-written checkpoint behind. In a multi-process
run every process calls save/restore (they are collectives): each writes the array shards it holds, process 0 the
JSON items and the commit marker, so `workdir` must be one folder every host sees (NFS, Filestore, a gcsfuse mount).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import shutil
import signal
import threading
import traceback
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as pp

from gazejax.engine import logs, parallel

log = logging.getLogger("gazejax")
MONITOR_KEY = "_monitor"  # sign-adjusted monitored metric (higher is better)
STAGE_KEY = "_stage"


@dataclasses.dataclass
class _LatestPlusBestPerStage(pp.PreservationPolicy):
    """Keeps the last `n` checkpoints and, per stage, the one with the highest `_monitor` metric."""

    n: int
    # step -> {MONITOR_KEY, STAGE_KEY}, read back from each checkpoint's meta item: Orbax does not reload the
    # metrics of checkpoints written before a restart, and without them a resumed run would delete the best one.
    known: dict = dataclasses.field(default_factory=dict)

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        keep = [i >= len(checkpoints) - self.n for i in range(len(checkpoints))]
        best: dict[Any, tuple[float, int]] = {}
        for i, info in enumerate(checkpoints):
            metrics = info.metrics or self.known.get(int(info.step)) or {}
            if MONITOR_KEY in metrics:
                stage = metrics.get(STAGE_KEY, 0)
                value = float(metrics[MONITOR_KEY])
                if stage not in best or value > best[stage][0]:
                    best[stage] = (value, i)
        for _, i in best.values():
            keep[i] = True
        return keep


class CorruptCheckpointError(ValueError):
    """No checkpoint of the workdir can be read back."""


# TensorStore (Orbax's array store) writes arrays under a path holding these characters but cannot read them back:
# every checkpoint would be "broken" after the first epoch. Found by hand: "[" and "\\"; "]", "{", "'", ",", ":",
# "#", "?", "%", "*" and spaces are fine.
UNSAFE_PATH_CHARACTERS = ("[", "\\")


def check_path(path: str, what: str) -> None:
    """A one-line ValueError, before anything is written, when Orbax could not read arrays back from `path`."""
    bad = [c for c in UNSAFE_PATH_CHARACTERS if c in os.path.abspath(path)]
    if bad:
        raise ValueError(f"{os.path.abspath(path)}: {what} cannot hold Orbax checkpoints: TensorStore does not read "
                         f"arrays back from a path containing {' or '.join(repr(c) for c in bad)}; choose another")


class Checkpointer:
    """Saves/restores {"state": pytree, "data": json, "meta": json} under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, keep_last: int = 2, async_save: bool = True):
        check_path(workdir, "the workdir")
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._policy = _LatestPlusBestPerStage(n=max(1, keep_last))
        self._options = ocp.CheckpointManagerOptions(
            preservation_policy=self._policy,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        for step in self.manager.all_steps():
            try:
                meta = self.restore_meta(step)
            except Exception:  # noqa: BLE001 - a broken checkpoint; `recover` reports it
                continue
            if meta.get("monitor") is not None:
                self._policy.known[int(step)] = {MONITOR_KEY: float(meta["monitor"]), STAGE_KEY: int(meta["stage"])}
        # until close: a failed write's hundreds of tracebacks in TensorStore's callback threads are counted, not shown
        self._quiet_callbacks = logs.QuietWriterCallbacks()
        self._write_failed = False

    def verify(self, step: int) -> str | None:
        """None when every item of `step` reads back (arrays, data and meta), else the error's first words."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore(),
                                  meta=ocp.args.JsonRestore())
        try:
            self.manager.restore(step, args=args)
            return None
        except Exception as e:  # noqa: BLE001 - TensorStore, JSON and Orbax errors alike mean "unreadable"
            return " ".join(str(e).split())[:160] or type(e).__name__

    def recover(self) -> int | None:
        """Verifies the newest checkpoint; moves broken newer ones to `<workdir>/checkpoints_broken/` with a warning
        and returns the newest intact step (None: no checkpoint). Raises a one-line error when none is intact."""
        self.wait()
        broken = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            why = self.verify(step)
            if why is None:
                break
            broken.append((step, why))
        else:
            if broken:
                raise CorruptCheckpointError(
                    f"no intact checkpoint in {self.directory}: " + "; ".join(f"step {s}: {w}" for s, w in broken[:3])
                    + ". Move the folder away to start afresh")
            return None
        aside = os.path.join(os.path.dirname(self.directory), "checkpoints_broken")
        if broken:  # every process has verified before the one writer (process 0) moves anything
            parallel.barrier("gazejax_checkpoint_verified")
        for bad, why in broken:
            if parallel.is_primary():
                os.makedirs(aside, exist_ok=True)
                shutil.move(os.path.join(self.directory, str(bad)), os.path.join(aside, str(bad)))
            log.warning("checkpoint step %d is broken (%s); moved to %s, resuming from step %d", bad, why,
                        os.path.join(aside, str(bad)), step)
            self._policy.known.pop(bad, None)
        if broken:  # the manager lists steps it found at start-up: reopen it on the folder as it is now
            parallel.barrier("gazejax_checkpoint_moved")
            self.manager.close()
            self.manager = ocp.CheckpointManager(self.directory, options=self._options)
        return step

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None, meta: dict, monitor: float | None = None,
             force: bool = False) -> None:
        """Saves asynchronously; `monitor` (higher is better) marks the step as a best-candidate of its stage."""
        metrics = None
        if monitor is not None:
            metrics = {MONITOR_KEY: float(monitor), STAGE_KEY: int(meta.get("stage", 0))}
            self._policy.known[int(step)] = metrics
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta),
        )
        with self._writing():
            self.manager.save(step, args=args, metrics=metrics, force=force)  # also awaits the previous save

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores (state, data_state, meta) of `step`, placing arrays as `abstract_state`'s shardings say."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        try:
            out = self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - unreadable, or readable but of another shape (the caller's case)
            why = self.verify(step)
            if why is not None:
                raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} is broken: {why}") from e
            raise
        return out["state"], dict(out["data"] or {}), dict(out["meta"] or {})

    def restore_meta(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def best_step(self, stage: int) -> int | None:
        """The preserved step with the highest monitored metric of `stage`, or None."""
        best = None
        for step in self.manager.all_steps():
            try:
                meta = self.restore_meta(step)
            except Exception:  # noqa: BLE001 - unreadable: not a candidate
                continue
            if meta.get("stage") != stage or meta.get("monitor") is None:
                continue
            if best is None or meta["monitor"] > best[0]:
                best = (meta["monitor"], step)
        return None if best is None else best[1]

    def wait(self) -> None:
        with self._writing():
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (full disk, read-only or forbidden folder; Orbax reports it as OSError or as TensorStore's
        ValueError) is raised as one OSError naming the checkpoint folder; other errors propagate as they are."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            reason = logs.write_failure(str(e))
            if reason is None:
                raise
            self._write_failed = True
            _clear_locals(e)
            raise OSError(f"cannot write a checkpoint in {self.directory}: {reason}; the checkpoints saved before "
                          "are intact: free space or fix the folder, then rerun the same command to resume") from e

    def close(self) -> None:
        # Orbax's start-up sweep of temporary directories runs in a thread that only a save awaits; a run that stops
        # before its first save (a data error) must await it too, or it fails at interpreter shutdown after the error
        try:
            getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
            self.manager.wait_until_finished()
            self.manager.close()
        finally:
            if self._write_failed:  # the failed write's orphaned asyncio tasks report when collected: now, still quiet
                gc.collect()
            self._quiet_callbacks.close()


def _clear_locals(error: BaseException) -> None:
    """Drops the local variables of the frames that `error` and the errors it came from passed through (their
    traceback still prints): the failed write's other asyncio tasks, referenced from there, are then collected in
    `close`, while their "Task exception was never retrieved" is hidden, rather than at exit."""
    for link in logs.error_chain(error):
        traceback.clear_frames(link.__traceback__)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class PreemptionFlag:
    """Set by SIGTERM so the training loop can save a checkpoint and exit cleanly (on every process together)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> "PreemptionFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self._event.set()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def raised(self) -> bool:
        """Whether any process got the signal. Multi-process, this is a collective (every process reads it at the
        same step): a process that saved alone would wait forever in Orbax's collective save."""
        return parallel.any_process(self._event.is_set())

    def set(self) -> None:
        self._event.set()
