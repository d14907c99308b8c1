#!/usr/bin/env bash
# Runs gazejax as N processes of one jax.distributed job on this machine (what a multi-host run does, on one host).
#
# Usage:
#   launch/local_multiprocess.sh [-n N] [-c CPU_DEVICES] [-g GPUS_PER_PROCESS] [-p PORT] [-l LOG_DIR] [--dry-run]
#                                [--] GAZEJAX_MAIN_ARGS...
#
#   -n N                 number of processes (default 2)
#   -c CPU_DEVICES       run on CPU with this many XLA host devices per process (XLA_FLAGS
#                        --xla_force_host_platform_device_count; gloo collectives between processes)
#   -g GPUS_PER_PROCESS  give process i the GPUs i*K .. i*K+K-1 (CUDA_VISIBLE_DEVICES); default: JAX decides
#   -p PORT              coordinator port on 127.0.0.1 (default 12355)
#   -l LOG_DIR           where processes 1..N-1 write their output (default: a new folder under /tmp);
#                        process 0 writes to this terminal
#   --dry-run            print each process's environment and command, start nothing
#   PYTHON=...           interpreter (default: .venv/bin/python of this checkout if present, else python3)
#
# Each process gets GAZEJAX_COORDINATOR=127.0.0.1:PORT, GAZEJAX_NUM_PROCESSES=N and GAZEJAX_PROCESS_ID=i, which
# gazejax.engine.parallel.maybe_initialize_distributed turns into jax.distributed.initialize(). Only process 0 writes logs
# and the report; checkpoints are written by all processes together into the one --workdir.
#
# Example (2 processes x 2 CPU devices = the 4-device data-parallel run of one process with 4 devices):
#   launch/local_multiprocess.sh -n 2 -c 2 -- --config=configs/brats.py --workdir=runs/brats_mp
#
# Needs bash >= 5.1. Ctrl-C / SIGTERM is forwarded to every process (the trainer then saves a checkpoint and
# exits with 143); if one process fails, the others are stopped and the script exits with that process's status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
num=2 cpu_devices="" gpus="" port=12355 log_dir="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) num="$2"; shift 2 ;;
    -c) cpu_devices="$2"; shift 2 ;;
    -g) gpus="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    -l) log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: -n must be a positive integer, got '$num'" >&2; exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "local_multiprocess.sh: no gazejax.main arguments (e.g. -- --config=configs/brats.py); see --help" >&2; exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

process_env() {  # the environment of process $1, one NAME=value per line
  echo "GAZEJAX_COORDINATOR=127.0.0.1:$port"
  echo "GAZEJAX_NUM_PROCESSES=$num"
  echo "GAZEJAX_PROCESS_ID=$1"
  if [[ -n "$cpu_devices" ]]; then
    echo "JAX_PLATFORMS=cpu"
    echo "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices"
  fi
  if [[ -n "$gpus" ]]; then
    echo "CUDA_VISIBLE_DEVICES=$(seq -s, $(( $1 * gpus )) $(( $1 * gpus + gpus - 1 )))"
  fi
}

if [[ "$dry_run" == 1 ]]; then
  for (( i = 0; i < num; i++ )); do
    mapfile -t envs < <(process_env "$i")
    printf 'env'; printf ' %q' "${envs[@]}" "$PYTHON" -m gazejax.main "$@"; printf '\n'
  done
  exit 0
fi

log_dir="${log_dir:-$(mktemp -d /tmp/gazejax_processes.XXXXXX)}"
mkdir -p "$log_dir"
pids=()
stop_all() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap 'stop_all' INT TERM
for (( i = 0; i < num; i++ )); do
  mapfile -t envs < <(process_env "$i")
  if [[ "$i" == 0 ]]; then
    env "${envs[@]}" "$PYTHON" -m gazejax.main "$@" &
  else
    env "${envs[@]}" "$PYTHON" -m gazejax.main "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
[[ "$num" -gt 1 ]] && echo "local_multiprocess.sh: output of processes 1..$((num - 1)) in $log_dir" >&2

status=0 running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  rc=0 finished=""
  wait -n -p finished "${running[@]}" || rc=$?
  [[ -z "${finished:-}" ]] && continue  # woken by a forwarded signal, not by a process exit
  rest=(); for pid in "${running[@]}"; do [[ "$pid" != "$finished" ]] && rest+=("$pid"); done
  running=("${rest[@]}")
  if [[ "$rc" != 0 && "$status" == 0 ]]; then
    status=$rc
    echo "local_multiprocess.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
