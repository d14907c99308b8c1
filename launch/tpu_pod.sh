#!/usr/bin/env bash
# gazejax on a Cloud TPU pod slice (TPU VM): set up every worker, bring the data from GCS, run one process per host.
#
# Usage (from the root of a gazejax checkout on your workstation; gcloud authenticated, TPU VM already created,
# e.g. `gcloud compute tpus tpu-vm create NAME --zone=ZONE --accelerator-type=v5p-32 --version=v2-alpha-tpuv5`):
#   launch/tpu_pod.sh setup NAME ZONE                    copy this checkout (git HEAD) to ~/gazejax on every worker,
#                                                        create ~/gazejax/.venv with gazejax and jax[tpu]
#   launch/tpu_pod.sh data  NAME ZONE GS_URL LOCAL_DIR   copy a data set from GCS onto every worker's disk
#                                                        (gcloud storage rsync; each worker reads its own copy)
#   launch/tpu_pod.sh mount NAME ZONE BUCKET MOUNT_DIR   mount a bucket with gcsfuse at MOUNT_DIR on every worker:
#                                                        the shared --workdir for checkpoints, logs and the report
#   launch/tpu_pod.sh run   NAME ZONE -- MAIN_ARGS...    python -m gazejax.main MAIN_ARGS on every worker at once
#   launch/tpu_pod.sh stop  NAME ZONE                    stop a running gazejax on every worker (SIGTERM: the
#                                                        trainer saves a checkpoint; `run` again resumes)
# Environment: PROJECT (gcloud --project, default: gcloud's), DRY_RUN=1 (print the gcloud commands, run nothing).
#
# Example (BraTS, paper preset, on a v5p-32 = 4 hosts):
#   launch/tpu_pod.sh setup my-pod us-east5-a
#   launch/tpu_pod.sh data  my-pod us-east5-a gs://my-bucket/MICCAI_BraTS2020_TrainingData /tmp/brats
#   launch/tpu_pod.sh mount my-pod us-east5-a my-runs-bucket /mnt/runs
#   launch/tpu_pod.sh run   my-pod us-east5-a -- --config=configs/brats.py:preset=paper \
#       --config.data.root=/tmp/brats --workdir=/mnt/runs/brats_paper
#
# Spatial partitioning (README "Spatial partitioning"): each volume split along depth over the 4 chips of a v5p-32
# host, the batch over its 4 hosts (mesh data 4 x spatial 4; mesh.spatial must divide the chips per host), here on
# whole brain boxes:
#   launch/tpu_pod.sh run   my-pod us-east5-a -- --config=configs/brats.py:preset=paper --config.mesh.spatial=4 \
#       --config.batch_size=4 --config.data.whole_volume=True --config.data.root=/tmp/brats --workdir=/mnt/runs/brats_wv
#
# `run` sets GAZEJAX_DISTRIBUTED_AUTO=1: jax.distributed.initialize() finds the pod's hosts from the TPU metadata.
# The global batch (config batch_size) is split over every chip of the slice and must divide evenly. Every worker
# must run the same command at the same time (that is what --worker=all does); output of worker 0 is the one to read.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
if [[ $# -lt 3 ]]; then usage >&2; exit 2; fi
action="$1" name="$2" zone="$3"; shift 3
project_flag=()
[[ -n "${PROJECT:-}" ]] && project_flag=(--project="$PROJECT")

run() {  # runs (or with DRY_RUN=1 prints) one command
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}
on_all() {  # runs a shell command on every worker of the slice
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" "${project_flag[@]}" --worker=all --command="$1"
}
quote() { printf '%q ' "$@"; }

case "$action" in
  setup)
    tarball="/tmp/gazejax_src_$$.tar.gz"
    run git -C "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" archive --format=tar.gz -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$name:~/gazejax_src.tar.gz" --zone="$zone" \
      "${project_flag[@]}" --worker=all
    on_all 'set -e; mkdir -p ~/gazejax && tar -xzf ~/gazejax_src.tar.gz -C ~/gazejax && cd ~/gazejax &&
      python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
      .venv/bin/pip install -q -e ".[tfds]" "jax[tpu]" &&
      .venv/bin/python -c "import jax; print(jax.process_index(), jax.local_device_count(), \"local TPU chips\")"'
    ;;
  data)
    [[ $# -eq 2 ]] || { echo "tpu_pod.sh data NAME ZONE GS_URL LOCAL_DIR" >&2; exit 2; }
    on_all "mkdir -p $(quote "$2") && gcloud storage rsync --recursive $(quote "$1") $(quote "$2")"
    ;;
  mount)
    [[ $# -eq 2 ]] || { echo "tpu_pod.sh mount NAME ZONE BUCKET MOUNT_DIR" >&2; exit 2; }
    on_all "command -v gcsfuse >/dev/null || { echo 'install gcsfuse on the TPU VM image first'; exit 1; };
      sudo mkdir -p $(quote "$2") && sudo chown \$USER $(quote "$2") &&
      (mountpoint -q $(quote "$2") || gcsfuse --implicit-dirs $(quote "$1") $(quote "$2"))"
    ;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -gt 0 ]] || { echo "tpu_pod.sh run NAME ZONE -- MAIN_ARGS (e.g. --config=configs/brats.py)" >&2; exit 2; }
    main="GAZEJAX_DISTRIBUTED_AUTO=1 exec .venv/bin/python -m gazejax.main $(quote "$@")"
    on_all "cd ~/gazejax && echo \$\$ > run.pid && $main"
    ;;
  stop)
    # shellcheck disable=SC2016  # expanded by the remote / per-task shell, on purpose
    on_all 'test -f ~/gazejax/run.pid && kill -TERM "$(cat ~/gazejax/run.pid)" 2>/dev/null || true'
    ;;
  *)
    usage >&2; exit 2 ;;
esac
