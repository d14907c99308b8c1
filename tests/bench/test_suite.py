"""Benchmark suite: every row's config parses, commands carry the preset's step count and flags, failed rows stay
visible, and the table shows the numbers of the JSON files (hand-made results)."""
from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

from gazejax.bench import suite

pytestmark = pytest.mark.slow


def _config(row):
    """The row's config as `--config=path:arg` gives it (the module's get_config(arg))."""
    path, _, arg = row.config.partition(":")
    spec = importlib.util.spec_from_file_location("cfg_" + row.key, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _apply_overrides(c, row):
    """Sets the row's `--config.a.b=v` overrides on `c` (each field must exist; tuples written as "(a, b)")."""
    for flag in row.overrides:
        dotted, value = flag.removeprefix("--config.").split("=")
        *parents, last = dotted.split(".")
        node = c
        for p in parents:
            node = node[p]
        assert last in node, (row.key, flag)
        node[last] = eval(value) if value.startswith("(") else type(node[last])(value)  # noqa: S307


@pytest.mark.parametrize("preset", ["demo", "paper", "torch"])
def test_every_row_config_exists_and_names_a_stage_it_has(preset):
    from gazejax import methods

    keys = [r.key for r in suite.ROWS[preset]]
    assert len(keys) == len(set(keys)) and all(preset in k for k in keys)
    for row in suite.ROWS[preset]:
        c = _config(row)
        assert c.preset == preset or (preset == "torch" and row.torch)
        _apply_overrides(c, row)
        if row.stage:
            names = [s.name for s in methods.get(c.method_family).stages(c)]
            assert row.stage in names, (row.key, names)


def test_command_uses_the_preset_step_count_stage_and_torch_only_where_marked(tmp_path):
    demo = next(r for r in suite.ROWS["demo"] if r.stage)
    cmd = suite.command(demo, "demo", str(tmp_path), "/x/python", ["--config.seed=3"])
    assert "--steps=5" in cmd and f"--stage={demo.stage}" in cmd and "--config.seed=3" in cmd
    assert "--compare-torch" not in cmd and f"--json={tmp_path / (demo.key + '.json')}" in cmd
    paper = next(r for r in suite.ROWS["paper"] if r.torch)
    cmd = suite.command(paper, "paper", str(tmp_path), "/x/python", [])
    assert "--steps=2" in cmd and "--compare-torch" in cmd and "--torch-python=/x/python" in cmd
    assert "--compare-torch" not in suite.command(paper, "paper", str(tmp_path), None, [])


def _result(train_ms: float, infer_ms: float, flops: float) -> dict:
    part = lambda ms: {"compile_s": 2.0, "step_s_median": ms / 1e3, "samples_per_s": 2 / (ms / 1e3),  # noqa: E731
                       "flops_per_step": flops, "flops_per_s": flops / (ms / 1e3), "mfu": flops / (ms / 1e3) / 2e11}
    return {"batch_size": 2, "input_shapes": [[2, 48, 48, 48, 4]], "train": part(train_ms), "infer": part(infer_ms),
            "memory": {"max_rss_bytes": 3 * 2**30}}


def test_table_shows_measured_and_failed_rows(tmp_path):
    first, second, third = suite.ROWS["demo"][:3]
    (tmp_path / f"{first.key}.json").write_text(json.dumps(_result(1000.0, 250.0, 8e9)))
    (tmp_path / f"{second.key}.failed.json").write_text(json.dumps({"failed": "out of memory (killed)"}))
    fed = {**_result(500.0, 100.0, 1e9), "pipeline": {"samples_per_s": 12.0, "over_demand": 3.0, "num_workers": 2}}
    (tmp_path / f"{third.key}.json").write_text(json.dumps(fed))
    time.sleep(0.01)
    (tmp_path / f"{third.key}.failed.json").write_text(json.dumps({"failed": "timed out after 60 s"}))
    lines = suite.table(str(tmp_path), ["demo"]).splitlines()
    assert len(lines) == 5  # header, rule, three rows
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    # 8 GFLOP in 1 s = 8 GFLOP/s = 4.0 % of 0.2 TFLOP/s; 8 GFLOP in 0.25 s = 32 GFLOP/s = 16.0 %
    assert cells[2:13] == ["n/r", "2, 48x48x48", "2.0 / 2.0 s", "1000 / 250 ms", "2 / 8", "8", "8 / 32",
                           "4.0 / 16.0 %", "3.0 GiB", "", ""]  # n/r: a result without its conv formulation
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)  # failed rows too
    assert "out of memory" in lines[3] and "timed out" in lines[4]  # the latest attempt wins over an older result
    os.utime(tmp_path / f"{third.key}.failed.json", (0, 0))
    row = suite.table(str(tmp_path), ["demo"]).splitlines()[4]
    assert "500 / 100 ms" in row and row.endswith("| 12/s (3.0x, 2 workers) |")


def test_torch_rows_each_have_a_torch_twin():
    """Every `--preset=torch` row builds a PyTorch model (no skip, no narrowed torchvision backbone): EquiUnet at
    widths 8/16/48 x crops 64/96/128, the seven torchvision backbones at 224^2, GG-CAM's two at the paper size."""
    import numpy as np

    from gazejax.bench import step

    names = []
    for row in suite.ROWS["torch"]:
        c = _config(row)
        _apply_overrides(c, row)
        shape = ((1, *c.data.crop_size, 4) if "brats" in row.config else (int(c.batch_size), *c.data.image_size, 1))
        spec = step.torch_spec(c, [np.zeros(shape, np.float32)])
        assert "skip" not in spec and not spec.get("narrowed"), (row.key, spec)
        names.append(spec.get("name") or f"equiunet_w{spec['width']}_{shape[1]}")
    assert sorted(n for n in names if not n.startswith("equiunet")) == sorted(
        ["resnet18", "mobilenet_v2", "efficientnet_b0", "resnet50", "vit_b_16", "efficientnet_v2_s", "densenet201",
         "resnet50", "efficientnet_v2_s"])
    assert sorted(n for n in names if n.startswith("equiunet")) == sorted(
        f"equiunet_w{w}_{c}" for w in (8, 16, 48) for c in (64, 96, 128))
