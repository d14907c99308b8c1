"""Runs a test file's worker half in a subprocess with N forced CPU devices (the device count is fixed before JAX
starts, so it cannot change inside the pytest process) and returns the pickle the worker wrote."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int, optimize: bool = False) -> dict:
    """The worker's environment: CPU only, `devices` forced devices, this checkout first on the path, no GAZEJAX_
    switches of the caller; `optimize=False` disables most XLA optimisations (compilation dominates tiny runs)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("GAZEJAX_")}
    out.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=REPO + os.pathsep + out.get("PYTHONPATH", ""))
    if not optimize:
        out["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    return out


def run_worker(script: str, out: str, *args: str, devices: int = 4, optimize: bool = False,
               timeout: int = 900):
    """`python script out *args` under `env(devices, optimize)`; asserts it succeeded and loads its pickle `out`."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), out, *args], cwd=REPO,
                          env=env(devices, optimize), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    with open(out, "rb") as f:
        return pickle.load(f)


def worker_main(worker) -> None:
    """The `__main__` half of such a file: `worker(out, tmp_dir)` with `out` = argv[1] and a temporary folder that
    is removed afterwards (the worker writes its pickle to `out`)."""
    import tempfile

    sys.path.insert(0, REPO)
    with tempfile.TemporaryDirectory() as tmp_dir:
        worker(sys.argv[1], tmp_dir)
