"""Fixtures of the fault tests: a small tmpfs stands for a full disk."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)` mounts a tmpfs of `size` (e.g. "256k") on a new folder and returns it; unmounted at the end.
    Root only (CI runs as root); skipped where mounting is not allowed."""
    mounted = []

    def mount(size: str):
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                          capture_output=True).returncode:
            pytest.skip("needs permission to mount a tmpfs")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
