r"""Benchmark of a config's train step and inference step on this machine: compile time, median step time,
samples/s, XLA FLOPs per step, achieved FLOP/s, MFU against the device's peak, peak memory.

  python -m gazejax.bench --config=configs/brats.py[:preset=paper,...] [--steps=N] [--stage=NAME]
                          [--compare-torch] [--torch-python=PATH] [--json=FILE] [--pipeline-batches=N]
                          [--config.a.b=v]
  python -m gazejax.bench --predict-model=MODEL_DIR --predict-input=PATH     (gazejax.bench.predict)

Everything runs through the real trainer (`gazejax.engine.trainer.Trainer`: init_variables, new_state, make_train_step, and
the model's inference apply) on one real batch of the method's own data, so every method family works. FLOPs come
from XLA's cost analysis of the compiled step (per device, times the device count). The peak is the dense rate
published for the accelerator (bf16 and fp32; TPUs run f32 matmuls as bf16 passes at default precision, GPUs as
TF32) or, on CPU, a measured matmul rate of the config's compute dtype. --compare-torch times a PyTorch equivalent
of the backbone (EquiUnet for 3D, torchvision for 2D) when torch is importable here or in --torch-python, once
before and once after the JAX steps (their mean is compared; both are printed).
The training input pipeline is also timed alone (`--pipeline-batches`, default 10; the config's `data.num_workers`
Grain worker processes, 0 = threads in-process) and compared with the samples per second the train step consumes:
below 3x the step may wait for data.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

# Dense peak FLOP/s per chip: (device_kind substrings, bf16, fp32-as-run). First match wins.
PEAKS = (
    (("v6 lite", "v6e"), 918e12, 918e12),
    (("v5 lite", "v5e"), 197e12, 197e12),
    (("v5p", "v5"), 459e12, 459e12),
    (("v4",), 275e12, 275e12),
    (("h200",), 989e12, 494.5e12),
    (("h100 pcie",), 756e12, 378e12),
    (("h100",), 989e12, 494.5e12),
    (("a100",), 312e12, 156e12),
)


def published_peak(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one chip of `device_kind` for compute `dtype`, or None when unknown."""
    kind = device_kind.lower()
    for names, bf16, fp32 in PEAKS:
        if any(n in kind for n in names):
            return bf16 if dtype in ("bfloat16", "float16") else fp32
    return None


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul on the first device (the CPU peak MFU is measured against)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    best = min(_timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats))
    return 2.0 * n**3 / best


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn` after one warm-up call."""
    fn()
    return statistics.median(_timed(fn) for _ in range(repeats))


def run_repo_module(python: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m *args` with this checkout first on PYTHONPATH, for an interpreter (e.g. one with torch) where
    gazejax is not installed; output captured."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([python, "-m", *args], capture_output=True, text=True, env=env)


def peak_memory() -> dict[str, float]:
    """Peak bytes in use on the busiest local device (where the backend reports it) and the process's max RSS."""
    import jax

    out = {"max_rss_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0}
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    if any(p is not None for p in peaks):
        out["device_peak_bytes"] = float(max(p for p in peaks if p is not None))
    return out


def compute_dtype(config) -> str:
    """The config's compute dtype: `config.dtype`, else `config.model.dtype`, else float32."""
    model = config.get("model") or {}
    return str(config.get("dtype") or (model.get("dtype") if hasattr(model, "get") else None) or "float32")


def _measure(compiled: Callable, args: tuple, steps: int, carry: bool) -> list[float]:
    """Times `steps` calls after one warm-up; with `carry`, the first output feeds the next call (donated state)."""
    import jax

    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        if i:
            times.append(time.perf_counter() - t0)
        if carry:
            args = (out[0],) + tuple(args[1:])
    return times


def _step_report(lowered_fn: Callable, args: tuple, steps: int, carry: bool, batch: int, n_dev: int) -> dict:
    from gazejax.engine import profiling

    t0 = time.perf_counter()
    compiled = lowered_fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = profiling.cost_of(compiled)
    times = _measure(compiled, args, steps, carry)
    median = statistics.median(times)
    flops = cost.get("flops", 0.0) * n_dev  # cost analysis is per device (one SPMD partition)
    return {"compile_s": compile_s, "step_s_median": median, "step_s_min": min(times), "steps": steps,
            "samples_per_s": batch / median, "flops_per_step": flops, "flops_per_s": flops / median,
            "bytes_accessed_per_step": cost.get("bytes_accessed", 0.0) * n_dev,
            "xla_memory_estimate_bytes": cost.get("peak_bytes_estimate", float("nan"))}


def _counted_flops(report: dict, make: Callable, args: tuple, n_dev: int) -> None:
    """Replaces `report`'s FLOPs by those of the same step traced under `conv_impl.counting()` (no scanned filter
    gradient, no oneDNN custom calls) when that count is larger: XLA's cost analysis counts a loop body once, not
    per trip, and nothing inside a custom call."""
    from gazejax.engine import profiling
    from gazejax.models import conv_impl

    with conv_impl.counting():
        flops = profiling.cost_of(make().lower(*args).compile()).get("flops", 0.0) * n_dev
    if flops > report["flops_per_step"]:
        report.update(flops_per_step=flops, flops_per_s=flops / report["step_s_median"],
                      flops_source="XLA cost analysis of the same step without conv_impl's scanned filter "
                                   "gradient and oneDNN custom calls")


def _pick_stage(stages: list, name: str | None):
    if not name:
        return 0, stages[0]
    for i, stage in enumerate(stages):
        if stage.name == name or str(i) == name:
            return i, stage
    raise ValueError(f"no stage {name!r}; stages: {', '.join(s.name for s in stages)}")


def pipeline_report(it, batches: int, local_batch: int) -> dict:
    """The training input pipeline alone: `batches` more batches drawn from the started iterator `it` (its first
    batch, with the start-up, already drawn), as this process's samples per second. Stops early, with the count,
    when the iterator ends."""
    got, t0 = 0, time.perf_counter()
    for _ in range(int(batches)):
        try:
            next(it)
        except StopIteration:
            break
        got += 1
    seconds = time.perf_counter() - t0
    return {"batches": got, "seconds": seconds, "num_workers": int(getattr(it, "num_workers", 0)),
            "samples_per_s": got * local_batch / seconds if got and seconds > 0 else float("nan")}


def run(config, steps: int = 5, stage: str | None = None, compare_torch: bool = False,
        torch_python: str | None = None, pipeline_batches: int = 10) -> dict:
    """Benchmarks `config`'s train and inference steps and (`pipeline_batches` > 0) its training input pipeline;
    returns a dict (see `format_report`)."""
    import jax

    from gazejax import methods
    from gazejax.engine import parallel, trainer as train

    with tempfile.TemporaryDirectory(prefix="gazejax_bench_") as workdir:
        trainer = train.Trainer(config, workdir, methods.get(config.method_family))
        try:
            data = trainer.method.make_data(config, jax.process_index(), jax.process_count())
            idx, st = _pick_stage(trainer.stages, stage)
            it = trainer.train_iterator(data, st, None)
            batch = parallel.to_global(next(it), trainer.mesh)
            local_batch = parallel.local_batch_size(int(config.batch_size), trainer.mesh)
            pipe = pipeline_report(it, pipeline_batches, local_batch) if pipeline_batches > 0 else None
            it.close()  # stops Grain worker processes (data.num_workers > 0) before the timed steps
            variables = trainer.init_variables()
            tx = train._stage_tx(config, st, trainer.steps_per_epoch(data, st), variables["params"])
            state = trainer.new_state(variables, tx)
            n_dev, size = trainer.mesh.devices.size, int(config.batch_size)
            inputs = tuple(trainer.method.model_inputs(batch))
            # torch, JAX, torch: a load change during the run shows as two different torch times
            torch_inputs = [np.asarray(jax.device_get(x)) for x in inputs] if compare_torch else None
            torch_runs = [compare_with_torch(config, torch_inputs, steps, torch_python)] if compare_torch else []

            def make_infer():
                return jax.jit(lambda v, *x: trainer.model.apply(v, *x, train=False),
                               out_shardings=parallel.replicated(trainer.mesh),
                               compiler_options=trainer.compiler_options)

            infer_args = ({"params": state.params, **state.collections}, *inputs)
            infer_report = _step_report(make_infer(), infer_args, steps, False, size, n_dev)
            train_report = _step_report(trainer.make_train_step(tx, st), (state, batch), steps, True, size, n_dev)
            # only 3D convolutions have the scanned filter gradient; oneDNN's custom calls count no FLOPs
            if any(x.ndim == 5 for x in inputs) or trainer.compiler_options:
                _counted_flops(train_report, lambda: trainer.make_train_step(tx, st), (state, batch), n_dev)
                _counted_flops(infer_report, make_infer, infer_args, n_dev)
        finally:
            trainer.close()
    result = _machine(config, n_dev)
    result.update(config=_config_name(config), stage=st.name, stage_index=idx, batch_size=size,
                  input_shapes=[list(x.shape) for x in inputs], train=train_report, infer=infer_report,
                  memory=peak_memory())
    if pipe is not None:  # the pipeline's rate against what the train step consumes per process
        demand = train_report["samples_per_s"] / jax.process_count()
        result["pipeline"] = {**pipe, "step_demand_samples_per_s": demand,
                              "over_demand": pipe["samples_per_s"] / demand if demand > 0 else float("nan")}
    for part in ("train", "infer"):
        peak = result["peak_flops_per_s"]
        result[part]["mfu"] = result[part]["flops_per_s"] / peak if peak else float("nan")
    if compare_torch:
        if "skip" not in torch_runs[0]:
            torch_runs.append(compare_with_torch(config, torch_inputs, steps, torch_python))
        result["torch"] = merge_torch_runs(torch_runs)
        for part in ("train", "infer"):
            if result["torch"].get(part):
                result[part]["jax_over_torch_time"] = result[part]["step_s_median"] / result["torch"][part]
    return result


def merge_torch_runs(runs: list[dict]) -> dict:
    """One torch result from the runs before and after the JAX timing: the mean of their medians per part, with
    each run's median kept (`<part>_runs`); a skipped run (no torch) is returned as it is."""
    skipped = [r for r in runs if "skip" in r]
    if skipped:
        return skipped[0]
    out = dict(runs[0])
    for part in ("train", "infer"):
        out[f"{part}_runs"] = [r[part] for r in runs]
        out[part] = statistics.fmean(out[f"{part}_runs"])
    return out


def _config_name(config) -> str:
    keys = ("method_family", "method", "preset")
    return "/".join(str(config.get(k)) for k in keys if config.get(k) is not None)


def _machine(config, n_dev: int) -> dict:
    """Device description and the peak FLOP/s MFU is measured against (all devices of the mesh together)."""
    import jax

    device = jax.devices()[0]
    dtype = compute_dtype(config)
    from gazejax.models.conv_impl import resolve

    model = config.get("model") or {}
    conv = resolve(str(model.get("conv_impl", "auto"))) if hasattr(model, "get") else "xla"
    out = {"platform": device.platform, "device_kind": device.device_kind, "devices": n_dev, "conv_impl": conv,
           "processes": jax.process_count(), "compute_dtype": dtype, "cpu_count": os.cpu_count()}
    if device.platform == "cpu":  # forced host devices share the cores: the machine's matmul rate is the peak
        out["peak_flops_per_s"], out["peak_source"] = matmul_peak(dtype), f"measured {dtype} matmul (2048^3)"
    else:
        chip = published_peak(device.device_kind, dtype)
        out["peak_flops_per_s"] = chip * n_dev if chip else None
        out["peak_source"] = f"published dense {dtype} peak x {n_dev}" if chip else "unknown device kind"
    return out


# ---- PyTorch comparison (torch is imported here only, and only with --compare-torch) ----------------------------
TORCHVISION_WIDTHS = {  # config.model fields that narrow a backbone, with torchvision's value
    "resnet": (("resnet_width", 64),),
    "efficientnet": (("efficientnet_width_mult", 1.0), ("efficientnet_depth_mult", 1.0)),
    "densenet": (("densenet_growth", 32), ("densenet_blocks", (6, 12, 48, 32)), ("densenet_init_features", 64)),
}


def torch_spec(config, inputs: list[np.ndarray]) -> dict:
    """What to build in torch for `config`: an EquiUnet for 3D inputs, a torchvision model for 2D ones."""
    model = config.get("model") or {}
    backbone = str(model.get("backbone", "")) if hasattr(model, "get") else ""
    if not backbone and config.get("method_family") == "cxrgazelearn" and config.get("method") in ("dnet201",
                                                                                                   "dnet201_cl"):
        backbone = "densenet201"  # stage 1's DenseNet-201, the family's only torchvision network
    shape = list(inputs[0].shape)
    if len(shape) == 5:
        if backbone != "equiunet":
            return {"skip": f"no torch equivalent of 3D backbone {backbone!r}"}
        from gazejax.models.layers import num_groups

        width = int(model.get("width"))
        spec = {"kind": "equiunet", "width": width, "shape": shape, "classes": 3,
                "groups": {str(c): num_groups(c) for c in (width, 2 * width, 4 * width, 8 * width)}}
        if config.get("method") != "backbone":  # SAN, AAB and other heads have no torch twin here
            spec["note"] = "EquiUnet backbone only; the JAX step also runs the method's heads (method=backbone " \
                           "compares like with like)"
        return spec
    family = backbone.rstrip("0123456789_bsvl")  # resnet50 -> resnet, efficientnet_v2_s -> efficientnet
    narrowed = [k for k, default in TORCHVISION_WIDTHS.get(family, ())
                if (tuple(v) if isinstance(v := model.get(k, default), (list, tuple)) else v) != default]
    return {"kind": "torchvision", "name": backbone, "shape": shape, "classes": 3, "narrowed": narrowed}


def _torch_equiunet(width: int, in_channels: int, classes: int, groups: dict[str, int]):
    """open_brats2020's EquiUnet in torch; `groups`: GroupNorm groups by channel count (from the JAX side, so the
    torch interpreter needs neither jax nor flax)."""
    import torch
    from torch import nn

    def cnr(cin, cout, dil=1):
        return [nn.Conv3d(cin, cout, 3, padding=dil, dilation=dil, bias=False), nn.GroupNorm(groups[str(cout)], cout),
                nn.ReLU(inplace=True)]

    def ublock(cin, mid, cout, dil=1):
        return nn.Sequential(*cnr(cin, mid, dil), *cnr(mid, cout, dil))

    class EquiUnet(nn.Module):  # open_brats2020's EquiUnet, as gazejax.models.unet3d
        def __init__(self, w):
            super().__init__()
            self.enc = nn.ModuleList([ublock(in_channels, w, w), ublock(w, 2 * w, 2 * w), ublock(2 * w, 4 * w, 4 * w),
                                      ublock(4 * w, 8 * w, 8 * w)])
            self.bottom, self.bottom_2 = ublock(8 * w, 8 * w, 8 * w, 2), nn.Sequential(*cnr(16 * w, 4 * w))
            self.dec = nn.ModuleList([ublock(8 * w, 4 * w, 2 * w), ublock(4 * w, 2 * w, w), ublock(2 * w, w, w)])
            self.out, self.pool = nn.Conv3d(w, classes, 1), nn.MaxPool3d(2)
            self.up = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.enc):
                x = block(self.pool(x) if i else x)
                skips.append(x)
            x = self.bottom_2(torch.cat([skips[-1], self.bottom(skips[-1])], 1))
            for block, skip in zip(self.dec, reversed(skips[:-1])):
                x = block(torch.cat([skip, self.up(x)], 1))
            return self.out(x)

    return EquiUnet(width)


def time_torch(spec: dict, steps: int) -> dict:
    """Median train (forward, loss, backward, Adam) and inference step seconds of the torch model in `spec`."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    shape = spec["shape"]
    x = torch.randn([shape[0], shape[-1], *shape[1:-1]])  # channels-first
    if spec["kind"] == "equiunet":
        model = _torch_equiunet(spec["width"], shape[-1], spec["classes"], spec["groups"])
    else:
        import torchvision

        model = getattr(torchvision.models, spec["name"])(num_classes=spec["classes"])
        if shape[-1] != 3:  # torchvision stems take RGB; a grey image is repeated (a first-conv difference only)
            x = x[:, :1].repeat(1, 3, 1, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(x).float().pow(2).mean().backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    out = {"spec": spec, "torch_version": torch.__version__, "threads": torch.get_num_threads()}
    for name, fn in (("train", train_step), ("infer", infer_step)):
        model.train(name == "train")
        out[name] = median_seconds(fn, steps)
    return out


def compare_with_torch(config, inputs: list[np.ndarray], steps: int, torch_python: str | None) -> dict:
    """Times the torch equivalent here (torch importable) or in the interpreter `torch_python`."""
    spec = torch_spec(config, inputs)
    if "skip" in spec:
        return spec
    if spec.get("narrowed") and spec["kind"] == "torchvision":
        return {"skip": f"the config narrows the backbone ({', '.join(spec['narrowed'])}); torchvision has no such "
                        f"model", "spec": spec}
    if torch_python:
        proc = run_repo_module(torch_python, ["gazejax.bench", "--torch_spec", json.dumps(spec), "--steps", str(steps)])
        if proc.returncode:
            return {"skip": f"{torch_python} failed: {proc.stderr.strip().splitlines()[-1:]}", "spec": spec}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skip": "torch is not importable (pass --torch-python=PATH of an interpreter that has it)"}
    return time_torch(spec, steps)


# ---- output ----------------------------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value / scale:.{digits}g}{unit}"


def format_report(r: dict) -> str:
    """Human-readable lines of a `run` result."""
    lines = [f"config {r['config']} (stage {r['stage']}), global batch {r['batch_size']}, inputs {r['input_shapes']}",
             f"device {r['device_kind']} x{r['devices']} ({r['platform']}, {r['processes']} process(es), "
             f"{r['cpu_count']} CPUs), compute {r['compute_dtype']}; "
             f"peak {_fmt(r['peak_flops_per_s'], ' TFLOP/s', 1e12)} ({r['peak_source']})"]
    for part, label in (("train", "train step"), ("infer", "inference")):
        s = r[part]
        line = (f"{label:11s} compile {s['compile_s']:.1f} s | median {s['step_s_median'] * 1e3:.1f} ms | "
                f"{s['samples_per_s']:.2f} samples/s | {_fmt(s['flops_per_step'], ' GFLOP', 1e9)}/step | "
                f"{_fmt(s['flops_per_s'], ' GFLOP/s', 1e9)} | MFU {_fmt(100 * s['mfu'], ' %')}")
        if "jax_over_torch_time" in s:
            line += f" | JAX/torch time {s['jax_over_torch_time']:.2f}"
        lines.append(line)
    if "pipeline" in r:
        p = r["pipeline"]
        lines.append(f"input      {p['samples_per_s']:.2f} samples/s per process over {p['batches']} batches "
                     f"(data.num_workers={p['num_workers']}) | {p['over_demand']:.1f}x the train step's demand"
                     + (" (below 3x: the step may wait for data; try --config.data.num_workers)"
                        if p["over_demand"] < 3 else ""))
    mem = r["memory"]
    lines.append(f"memory     device peak {_fmt(mem.get('device_peak_bytes'), ' GiB', 2**30)} | process max RSS "
                 f"{_fmt(mem['max_rss_bytes'], ' GiB', 2**30)} | XLA estimate (train) "
                 f"{_fmt(r['train']['xla_memory_estimate_bytes'], ' GiB', 2**30)}")
    if "torch" in r:
        t = r["torch"]
        lines.append(f"torch      {t['skip']}" if "skip" in t else
                     f"torch      {t['torch_version']} ({t['threads']} threads) {t['spec']['kind']}: train "
                     f"{t['train'] * 1e3:.1f} ms, inference {t['infer'] * 1e3:.1f} ms"
                     + (" (mean of the runs before and after JAX: train {})".format(
                         " / ".join(f"{v * 1e3:.1f}" for v in t["train_runs"])) if "train_runs" in t else "")
                     + (f" ({t['spec']['note']})" if t["spec"].get("note") else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :key=val,... args.")
    steps = flags.DEFINE_integer("steps", 5, "Timed steps per benchmark (after one warm-up step).")
    stage = flags.DEFINE_string("stage", None, "Stage (name or index) whose train step is timed; default the first.")
    compare = flags.DEFINE_bool("compare-torch", False, "Also time a PyTorch equivalent of the backbone.")
    torch_python = flags.DEFINE_string("torch-python", None, "Interpreter with torch for --compare-torch.")
    out_json = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    pipe = flags.DEFINE_integer("pipeline-batches", 10, "Batches timed from the input pipeline alone (0 = skip).")
    spec = flags.DEFINE_string("torch_spec", None, "Internal: time only this torch spec and print JSON.")
    predict_model = flags.DEFINE_list("predict-model", None, "Time gazejax.predict with these exported models ...")
    predict_input = flags.DEFINE_string("predict-input", None, "... on these inputs (gazejax.bench.predict).")

    def _main(_):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax / XLA INFO lines would bury the report
        if spec.value:
            print(json.dumps(time_torch(json.loads(spec.value), steps.value)))
            return 0
        if predict_model.value:
            from gazejax.bench import predict as bench_predict

            print(bench_predict.format_row(bench_predict.run(predict_model.value, predict_input.value)), flush=True)
            return 0
        if config.value is None:
            raise app.UsageError("--config is required, e.g. --config=configs/brats.py")
        result = run(config.value, steps.value, stage.value, compare.value, torch_python.value, pipe.value)
        print(format_report(result), flush=True)
        if out_json.value:
            with open(out_json.value, "w") as f:
                json.dump(result, f, indent=2, default=float)
        return 0

    app.run(lambda argv: sys.exit(_main(argv)), argv=argv)
    return 0


if __name__ == "__main__":
    main()
