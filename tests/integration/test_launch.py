"""The launchers in launch/: syntax, the commands their dry runs print, and local_multiprocess.sh's process
handling (environment per process, a failing process stops the others) with a stand-in interpreter."""
from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ("local_multiprocess.sh", "slurm.sbatch", "tpu_pod.sh")


def _run(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GAZEJAX_", "DRY_RUN", "PYTHON"))}
    return subprocess.run(args, capture_output=True, text=True, env={**clean, **(env or {})}, timeout=timeout,
                          cwd=REPO)


@pytest.mark.parametrize("name", SCRIPTS)
def test_syntax_and_usage_header(name):
    path = os.path.join(LAUNCH, name)
    assert _run(["bash", "-n", path]).returncode == 0
    with open(path) as f:
        head = f.read(3000)
    assert head.startswith("#!/usr/bin/env bash") and "Usage" in head
    if shutil.which("shellcheck"):
        out = _run(["shellcheck", path])
        assert out.returncode == 0, out.stdout


def test_local_dry_run_prints_one_command_per_process():
    out = _run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "--dry-run", "-n", "3", "-c", "2", "-p", "4321",
                "--", "--config=configs/brats.py:preset=demo", "--workdir=runs/a b"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[1:6])
        assert words[0] == "env"
        assert env == {"GAZEJAX_COORDINATOR": "127.0.0.1:4321", "GAZEJAX_NUM_PROCESSES": "3",
                       "GAZEJAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        assert words[7:] == ["-m", "gazejax.main", "--config=configs/brats.py:preset=demo", "--workdir=runs/a b"]


def test_local_gpu_slices_and_bad_arguments():
    out = _run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "--dry-run", "-n", "2", "-g", "2", "--", "--x"])
    assert [w for line in out.stdout.splitlines() for w in shlex.split(line) if w.startswith("CUDA")] == [
        "CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3"]
    assert _run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "-n", "0", "--", "--x"]).returncode == 2
    bad = _run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "-n", "2"])
    assert bad.returncode == 2 and "no gazejax.main arguments" in bad.stderr


def test_local_failing_process_stops_the_others(tmp_path):
    """Process 1 fails; processes 0 and 2 (which would wait for their peer) are stopped; the failure's status wins."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    "echo \"id=$GAZEJAX_PROCESS_ID n=$GAZEJAX_NUM_PROCESSES args=$*\"\n"
                    "[[ $GAZEJAX_PROCESS_ID == 1 ]] && { sleep 2; exit 3; }\n"
                    "trap 'kill $sleeper; echo stopped; exit 143' TERM\n"
                    "sleep 30 & sleeper=$!; wait\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    logs = tmp_path / "logs"
    out = _run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "-n", "3", "-l", str(logs), "--", "--x"],
               env={"PYTHON": str(fake)}, timeout=20)
    assert out.returncode == 3, out.stderr
    assert "id=0 n=3 args=-m gazejax.main --x" in out.stdout and "stopped" in out.stdout
    assert "id=1 n=3" in (logs / "process_1.log").read_text()  # processes 1.. write to their log files
    assert "id=2 n=3" in (logs / "process_2.log").read_text()  # and process 2 was stopped: the run ended at all


def test_slurm_dry_run(tmp_path):
    script = os.path.join(LAUNCH, "slurm.sbatch")
    per_node = _run(["bash", script, "--config=configs/brats.py", "--workdir=/shared/x"],
                    env={"DRY_RUN": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4",
                         "VENV": str(tmp_path / "venv")})
    assert per_node.returncode == 0, per_node.stderr
    first, command = per_node.stdout.strip().splitlines()
    assert first == "GAZEJAX_DISTRIBUTED_AUTO=1 GAZEJAX_LOCAL_DEVICE_IDS=0,1,2,3"
    words = shlex.split(command)
    assert words[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert words[-3:] == [str(tmp_path / "venv" / "bin" / "python"), "--config=configs/brats.py", "--workdir=/shared/x"]
    per_gpu = _run(["bash", script, "--config=configs/brats.py"],
                   env={"DRY_RUN": "1", "SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8"})
    assert per_gpu.stdout.splitlines()[0] == "GAZEJAX_DISTRIBUTED_AUTO=1 GAZEJAX_LOCAL_DEVICE_IDS="
    with open(script) as f:
        directives = [line for line in f if line.startswith("#SBATCH")]
    assert any("--signal=TERM@" in d for d in directives) and any("--requeue" in d for d in directives)


def test_tpu_pod_dry_run():
    script = os.path.join(LAUNCH, "tpu_pod.sh")
    out = _run(["bash", script, "run", "my-pod", "us-east5-a", "--", "--config=configs/brats.py:preset=paper",
                "--workdir=/mnt/runs/a b"], env={"DRY_RUN": "1", "PROJECT": "proj"})
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert "--worker=all" in words and "--zone=us-east5-a" in words and "--project=proj" in words
    remote = shlex.split(next(w for w in words if w.startswith("--command=")).split("=", 1)[1])
    assert "GAZEJAX_DISTRIBUTED_AUTO=1" in remote
    assert remote[-4:] == ["-m", "gazejax.main", "--config=configs/brats.py:preset=paper", "--workdir=/mnt/runs/a b"]
    for action in (["setup"], ["data", "gs://bucket/brats", "/tmp/brats"], ["mount", "bucket", "/mnt/runs"], ["stop"]):
        res = _run(["bash", script, action[0], "my-pod", "us-east5-a", *action[1:]], env={"DRY_RUN": "1"})
        assert res.returncode == 0 and "--worker=all" in res.stdout, (action, res.stderr)
    assert _run(["bash", script, "data", "my-pod", "z"], env={"DRY_RUN": "1"}).returncode == 2
