"""gazejax.bench: the report of a tiny SAN+AAB config (fields, FLOPs > 0, train ~ 3x inference FLOPs), FLOPs of a
known matmul, the published peak table, and what the PyTorch comparison builds. No timing assertions."""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.bench import step as bench
from tests.conftest import tiny_brats_config


@pytest.mark.slow
def test_tiny_brats_report(tiny_brats_root, tmp_path, fast_compile):
    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), batch_size=2)
    r = bench.run(cfg, steps=1)
    assert (r["platform"], r["devices"], r["batch_size"], r["stage"]) == ("cpu", jax.device_count(), 2, "train")
    assert r["input_shapes"] == [[2, 32, 32, 32, 4]] and r["compute_dtype"] == "float32"
    assert r["peak_flops_per_s"] > 0 and "measured" in r["peak_source"]
    for part in ("train", "infer"):
        s = r[part]
        for key in ("compile_s", "step_s_median", "samples_per_s", "flops_per_step", "flops_per_s", "mfu"):
            assert math.isfinite(s[key]) and s[key] > 0, (part, key, s[key])
        assert s["samples_per_s"] == pytest.approx(2 / s["step_s_median"])
        assert s["mfu"] == pytest.approx(s["flops_per_s"] / r["peak_flops_per_s"])
    # a backward pass costs about twice the forward one: train-step FLOPs ~ 3x the inference step's
    assert 2.0 < r["train"]["flops_per_step"] / r["infer"]["flops_per_step"] < 4.5
    assert "scanned filter gradient" in r["train"]["flops_source"]  # XLA counts a loop body once
    assert r["memory"]["max_rss_bytes"] > 0
    text = bench.format_report(r)
    assert "train step" in text and "inference" in text and "MFU" in text and "GFLOP/step" in text
    p = r["pipeline"]  # the input pipeline alone, against the train step's demand
    assert 1 <= p["batches"] <= 10 and p["num_workers"] == 0 and p["samples_per_s"] > 0
    assert p["samples_per_s"] == pytest.approx(p["batches"] * 2 / p["seconds"])
    assert p["over_demand"] == pytest.approx(p["samples_per_s"] / r["train"]["samples_per_s"])
    assert f"{p['over_demand']:.1f}x the train step's demand" in text


def test_pipeline_report_counts_batches_and_stops_at_the_end():
    class Slow:
        num_workers = 2

        def __init__(self, n):
            self.left = n

        def __next__(self):
            if not self.left:
                raise StopIteration
            self.left -= 1
            time.sleep(0.01)
            return {}

    p = bench.pipeline_report(Slow(3), 10, 4)
    assert p["batches"] == 3 and p["num_workers"] == 2 and p["seconds"] >= 0.03
    assert p["samples_per_s"] == pytest.approx(12 / p["seconds"]) and p["samples_per_s"] <= 400


def test_flops_of_a_matmul_are_counted_exactly():
    a, b = jnp.ones((64, 128), jnp.float32), jnp.ones((128, 32), jnp.float32)
    report = bench._step_report(jax.jit(jnp.dot), (a, b), steps=2, carry=False, batch=64, n_dev=1)
    assert report["flops_per_step"] == 2 * 64 * 128 * 32
    assert report["samples_per_s"] == pytest.approx(64 / report["step_s_median"])


def test_published_peaks():
    assert bench.published_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert bench.published_peak("NVIDIA H100 PCIe", "float32") == 378e12
    assert bench.published_peak("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert bench.published_peak("NVIDIA H200", "bfloat16") == 989e12
    assert bench.published_peak("TPU v5 lite", "bfloat16") == 197e12
    assert bench.published_peak("TPU v5p", "float32") == 459e12
    assert bench.published_peak("TPU v4", "bfloat16") == 275e12
    assert bench.published_peak("TPU v6 lite", "bfloat16") == 918e12
    assert bench.published_peak("cpu", "float32") is None


def test_torch_specs(tiny_brats_root, tmp_path):
    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"))
    x = [np.zeros((2, 32, 32, 32, 4), np.float32)]
    spec = bench.torch_spec(cfg, x)
    assert (spec["kind"], spec["width"], spec["shape"]) == ("equiunet", 2, [2, 32, 32, 32, 4]) and "note" in spec
    assert spec["groups"] == {"2": 2, "4": 4, "8": 8, "16": 16}  # torch needs no flax for open_brats2020's groups
    cfg.method = "backbone"
    assert "note" not in bench.torch_spec(cfg, x)
    cfg.model.backbone = "nnunet"
    assert "skip" in bench.torch_spec(cfg, x)
    image = [np.zeros((4, 224, 224, 1), np.float32)]
    spec = bench.torch_spec(_Config({"model": {"backbone": "resnet50", "resnet_width": 64}}), image)
    assert (spec["kind"], spec["name"], spec["narrowed"]) == ("torchvision", "resnet50", [])
    demo = {"backbone": "efficientnet_v2_s", "resnet_width": 8, "efficientnet_width_mult": 0.25}
    assert bench.torch_spec(_Config({"model": demo}), image)["narrowed"] == ["efficientnet_width_mult"]
    dnet = {"method_family": "cxrgazelearn", "method": "dnet201",
            "model": {"densenet_growth": 32, "densenet_blocks": [6, 12, 48, 32], "densenet_init_features": 64}}
    assert bench.torch_spec(_Config(dnet), image)["name"] == "densenet201"
    assert not bench.torch_spec(_Config(dnet), image)["narrowed"]
    dnet["model"]["densenet_blocks"] = (3, 6, 12, 8)
    assert bench.torch_spec(_Config(dnet), image)["narrowed"] == ["densenet_blocks"]


def test_torch_comparison_without_torch_says_why():
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here")
    except ImportError:
        pass
    out = bench.compare_with_torch(_Config({"model": {"backbone": "resnet50"}}), [np.zeros((1, 64, 64, 3))], 1, None)
    assert "torch is not importable" in out["skip"]


class _Config(dict):
    """The dict-with-.get view of a config that torch_spec reads."""


def test_merge_torch_runs_before_and_after():
    """The torch times compared with JAX's are the mean of the runs before and after it, both kept; a skip stays."""
    runs = [{"spec": {"kind": "equiunet"}, "train": 2.0, "infer": 1.0}, {"spec": {}, "train": 4.0, "infer": 2.0}]
    out = bench.merge_torch_runs(runs)
    assert (out["train"], out["infer"], out["train_runs"], out["infer_runs"]) == (3.0, 1.5, [2.0, 4.0], [1.0, 2.0])
    assert out["spec"] == {"kind": "equiunet"}
    assert bench.merge_torch_runs([{"skip": "no torch"}]) == {"skip": "no torch"}


def test_run_repo_module_puts_this_checkout_on_pythonpath(monkeypatch):
    """The torch interpreter has no gazejax installed: the folder holding the `gazejax` package goes first on its
    PYTHONPATH (it was `gazejax/` itself, which only worked from the repository root)."""
    import os
    import subprocess

    seen = {}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: seen.update(cmd=cmd, env=kw["env"]))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    bench.run_repo_module("/x/python", ["gazejax.bench", "--steps", "1"])
    first, rest = seen["env"]["PYTHONPATH"].split(os.pathsep)
    assert os.path.isfile(os.path.join(first, "gazejax", "bench", "step.py")) and rest == "/elsewhere"
    assert seen["cmd"] == ["/x/python", "-m", "gazejax.bench", "--steps", "1"]
