r"""Per-device memory and step time of a BraTS train step split along depth over N devices (`config.mesh.spatial`).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m gazejax.bench.spatial \
      [--config=configs/brats.py:preset=paper] [--devices=1,2,4,8] [--shapes=128x128x128,240x240x160] \
      [--time-steps=0] [--json=FILE] [--config.a.b=v]

For each input shape and device count N the trainer's real train step (batch 1, mesh data 1 x spatial N) is lowered
and compiled from abstract arrays (nothing is initialised or read), and XLA's memory analysis of the compiled,
partitioned program gives the bytes one device needs: arguments (the replicated state and its share of the batch),
outputs, temporaries (activations kept for the backward pass, halos, gradients). `--time-steps=K` also runs K steps
on zeros and reports the median step time. On forced CPU devices the N "devices" share the host's cores, so step
time there measures the partitioning overhead, not a speed-up; memory per device is what carries over to GPUs/TPUs.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np


def batch_shapes(shape: tuple[int, int, int]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shapes and dtypes of one SAN+AAB training batch (batch 1) of spatial `shape`, as the BraTS pipeline makes."""
    from gazejax.data.brats.records import SAN_STRIDE

    grid = tuple(s // SAN_STRIDE for s in shape)
    return {"image": ((1, *shape, 4), np.float32), "target": ((1, *shape, 3), np.float32),
            "gaze": ((1, *grid, 1), np.float32), "has_gaze": ((1,), np.bool_),
            "wt_lowres": ((1, *grid, 1), np.float32), "survival": ((1,), np.int32)}


def measure(config, shape: tuple[int, int, int], devices: int, time_steps: int = 0) -> dict:
    """Compile time, per-device memory (bytes) and optionally the median step time of `config`'s train step on
    `devices` devices split along depth (`devices` divides `shape[0]`)."""
    import jax

    from gazejax import methods
    from gazejax.engine import parallel, trainer as train

    config = config.copy_and_resolve_references()
    config.batch_size, config.num_devices, config.mesh.spatial = 1, devices, devices
    config.data.crop_size = tuple(shape)
    with tempfile.TemporaryDirectory(prefix="gazejax_bench_spatial_") as workdir:
        trainer = train.Trainer(config, workdir, methods.get(config.method_family))
        try:
            mesh, stage = trainer.mesh, trainer.stages[0]
            replicated = parallel.replicated(mesh)
            inputs = trainer.method.model_inputs(trainer.method.init_batch(config))
            rng = jax.random.key(config.seed, impl="rbg")
            variables = jax.eval_shape(lambda r: trainer.model.init(r, *inputs, train=False), rng)
            tx = train._stage_tx(config, stage, 1, variables["params"])
            state = jax.eval_shape(lambda v: train.TrainState(
                step=jax.numpy.zeros((), jax.numpy.int32), params=v["params"],
                collections={k: x for k, x in v.items() if k != "params"}, opt_state=tx.init(v["params"]),
                rng=jax.random.PRNGKey(0)), variables)
            state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
            batch = {k: jax.ShapeDtypeStruct(s, d, sharding=parallel.leaf_sharding(mesh, np.empty(s, d)))
                     for k, (s, d) in batch_shapes(shape).items()}
            step = trainer.make_train_step(tx, stage)
            t0 = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            result = {"shape": list(shape), "devices": devices, "compile_s": round(time.perf_counter() - t0, 1),
                      **_memory(compiled)}
            if time_steps:
                result["step_s_median"] = _time_steps(compiled, state, batch, time_steps)
            return result
        finally:
            trainer.close()


def _memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k.replace("_size_in_bytes", "_bytes"): int(getattr(stats, k, 0) or 0) for k in keys}
    # donated state buffers are aliased to the outputs: counted once
    out["per_device_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def _time_steps(compiled, abstract_state, abstract_batch, steps: int) -> float:
    import jax

    def zeros(x):
        return jax.device_put(np.zeros(x.shape, x.dtype), x.sharding)

    state, batch = jax.tree.map(zeros, abstract_state), jax.tree.map(zeros, abstract_batch)
    times = []
    for _ in range(steps + 1):  # the first step is not timed (buffer allocation)
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times[1:]), 3)


def format_table(rows: list[dict]) -> str:
    """Markdown table: per-device memory (and its ratio to the 1-device figure) per shape and device count."""
    lines = ["| input | devices (spatial) | per-device memory | vs 1 device | temporaries | arguments | compile | "
             "step |", "|---|---|---|---|---|---|---|---|"]
    base = {tuple(r["shape"]): r["per_device_bytes"] for r in rows if r["devices"] == 1}
    for r in rows:
        shape, gib = tuple(r["shape"]), r["per_device_bytes"] / 2**30
        ratio = f"{r['per_device_bytes'] / base[shape]:.2f}" if shape in base else ""
        step = f"{r['step_s_median']:.1f} s" if "step_s_median" in r else ""
        lines.append(f"| {'x'.join(map(str, shape))} | {r['devices']} | {gib:.2f} GiB | {ratio} | "
                     f"{r['temp_bytes'] / 2**30:.2f} GiB | {r['argument_bytes'] / 2**30:.2f} GiB | "
                     f"{r['compile_s']:.0f} s | {step} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    flags.DEFINE_string("devices", "1,2,4,8", "comma-separated device counts (each divides every shape's depth)")
    flags.DEFINE_string("shapes", "128x128x128,240x240x160", "comma-separated DxHxW input shapes")
    flags.DEFINE_integer("time_steps", 0, "timed train steps per row (0 = memory only)")
    flags.DEFINE_string("json", "", "append each row as a JSON line to this file")
    config_flags.DEFINE_config_file("config", "configs/brats.py:preset=paper", "BraTS config")

    def run(_):
        cfg = flags.FLAGS.config
        rows = []
        for shape in (tuple(int(n) for n in s.split("x")) for s in flags.FLAGS.shapes.split(",")):
            for n in (int(d) for d in flags.FLAGS.devices.split(",")):
                row = measure(cfg, shape, n, flags.FLAGS.time_steps)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if flags.FLAGS.json:
                    with open(flags.FLAGS.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
        print(format_table(rows))

    app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
    main()
