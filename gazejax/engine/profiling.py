"""Step profiling: XLA cost analysis (FLOPs, bytes, memory) of the compiled train step, achieved FLOP/s, and an
optional jax.profiler trace of a window of steps (`config.profile`)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger("gazejax")


def cost_of(compiled: Any) -> dict[str, float]:
    """FLOPs / bytes accessed / memory of a compiled XLA executable (keys absent when the backend omits them)."""
    out: dict[str, float] = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        for key in ("flops", "bytes accessed", "transcendentals"):
            if cost and key in cost:
                out[key.replace(" ", "_")] = float(cost[key])
    except Exception as e:  # some backends do not implement it
        log.debug("cost analysis unavailable: %s", e)
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            for attr in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                         "generated_code_size_in_bytes"):
                if hasattr(mem, attr):
                    out[attr] = float(getattr(mem, attr))
            out["peak_bytes_estimate"] = out.get("temp_size_in_bytes", 0) + out.get("argument_size_in_bytes", 0) \
                + out.get("output_size_in_bytes", 0)
    except Exception as e:
        log.debug("memory analysis unavailable: %s", e)
    return out


class StepProfiler:
    """AOT-compiles the step (so cost analysis comes for free), times steps, traces a configured window."""

    def __init__(self, cfg: Any, workdir: str, writer: Any):
        cfg = cfg or {}
        self.enabled = bool(cfg.get("enabled", False))
        self.start = int(cfg.get("start_step", 5))
        self.num = int(cfg.get("num_steps", 3))
        self.trace_dir = os.path.join(workdir, "profile")
        self.writer = writer
        self.cost: dict[str, float] = {}
        self.times: list[float] = []
        self._tracing = False

    def compile(self, step_fn: Callable, *args) -> Callable:
        t0 = time.perf_counter()
        try:
            compiled = step_fn.lower(*args).compile()
        except Exception as e:  # fall back to plain jit dispatch
            log.warning("AOT compile failed (%s); using jit", e)
            return step_fn
        self.cost = cost_of(compiled)
        self.cost["compile_seconds"] = time.perf_counter() - t0
        log.info("train step compiled in %.1fs; cost analysis: %s", self.cost["compile_seconds"],
                 {k: f"{v:.3g}" for k, v in self.cost.items()})
        return compiled

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.start and not self._tracing:
            os.makedirs(self.trace_dir, exist_ok=True)
            jax.profiler.start_trace(self.trace_dir)
            self._tracing = True

    def after_step(self, step: int, seconds: float) -> None:
        self.times.append(seconds)
        if self._tracing and step >= self.start + self.num - 1:
            jax.profiler.stop_trace()
            self._tracing = False
            log.info("profiler trace written to %s", self.trace_dir)

    def summary(self) -> dict[str, float]:
        times = self.times[1:] or self.times  # the first call may include dispatch warm-up
        out = dict(self.cost)
        if times:
            med = float(np.median(times))
            out["step_seconds_median"] = med
            if "flops" in out and med > 0:
                out["achieved_flops_per_s"] = out["flops"] / med
        return out

    def finish(self) -> None:
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
        summary = self.summary()
        if summary:
            self.writer.write(0, {f"profile/{k}": v for k, v in summary.items()})
            if "achieved_flops_per_s" in summary:
                log.info("median step %.3fs, %.3g FLOP/step, %.1f GFLOP/s achieved",
                         summary["step_seconds_median"], summary["flops"], summary["achieved_flops_per_s"] / 1e9)
