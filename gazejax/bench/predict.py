"""The predict row of `python -m gazejax.bench`: cases (BraTS) or images (chest X-rays) per second of
`gazejax.predict` on given inputs, files read and written included; the first pass (loading, compiling) and the
steady state (a second pass over the same inputs, `--overwrite`) are reported apart.

  python -m gazejax.bench --predict-model=MODEL_DIR[,MODEL_DIR...] --predict-input=PATH
"""
from __future__ import annotations

import tempfile
import time


def run(model_dirs: list[str], input_path: str, **options) -> dict:
    """{"unit", "inputs", "first_s", "steady_s", "per_s"} of predicting `input_path` twice into a temporary folder."""
    from gazejax import predict

    with tempfile.TemporaryDirectory(prefix="gazejax_bench_predict_") as out:
        t0 = time.perf_counter()
        first = predict.predict(model_dirs, input_path, out, **options)
        t1 = time.perf_counter()
        predict.predict(model_dirs, input_path, out, overwrite=True, **options)
        t2 = time.perf_counter()
    n = first["done"]
    if n == 0:
        raise ValueError(f"--predict-input {input_path}: nothing was predicted ({first['failures'].summary(0)})")
    return {"unit": "cases" if first["kind"] == "volume" else "images", "inputs": n, "first_s": t1 - t0,
            "steady_s": t2 - t1, "per_s": n / (t2 - t1)}


def format_row(r: dict) -> str:
    return (f"predict    {r['inputs']} {r['unit']}: first pass {r['first_s']:.1f} s (loading and compiling "
            f"included), then {r['steady_s']:.1f} s = {r['per_s']:.2f} {r['unit']}/s (files read and written)")
