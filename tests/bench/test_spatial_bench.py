"""`python -m gazejax.bench.spatial`: one tiny run on 2 forced CPU devices prints a JSON row per device count and the
markdown table; splitting the volume over 2 devices lowers XLA's per-device memory estimate (the activations are
split, the replicated state is not)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gazejax.bench import spatial

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_spatial_bench_rows_and_memory_falls_with_devices(tmp_path):
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAZEJAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "gazejax.bench.spatial", "--config=configs/brats.py",
                           "--config.model.width=4", "--config.model.san_width=4", "--devices=1,2",
                           "--shapes=32x32x32", "--time_steps=1", f"--json={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["devices"] for r in rows] == [1, 2] and all(r["shape"] == [32, 32, 32] for r in rows)
    one, two = rows
    assert two["temp_bytes"] < 0.8 * one["temp_bytes"], (one, two)
    assert two["per_device_bytes"] < one["per_device_bytes"]
    for r in rows:
        assert r["per_device_bytes"] == (r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
                                         - r["alias_bytes"]) > 0 and r["step_s_median"] > 0
    assert spatial.format_table(rows).splitlines()[3].startswith("| 32x32x32 | 2 |") and "| 32x32x32 | 2 |" in proc.stdout
