#!/usr/bin/env bash
# Trains on the GPUs of this machine.
#   bash launch/gpu_train.sh --config=configs/vgnet.py:lrw --workdir=DIR \
#       [--gpus=0,1,2,3] [--num_processes=N] [--port=PORT] [--install_cuda] \
#       [--dry_run] [-- --config.batch_size=16 ...]
#
# Default: one process that sees every listed GPU (all by default) and trains
# data-parallel over them. --num_processes=N starts N processes instead, each
# with its own share of the GPUs (CUDA_VISIBLE_DEVICES), joined by
# jax.distributed through a coordinator on 127.0.0.1:PORT, as separate hosts
# would be (useful to test multi-host behaviour on one machine). Arguments
# after `--` go to launch.train. --install_cuda adds jax's CUDA 12 plugin
# (jax[cuda12], same jax version as requirements.txt) to ./.venv. --dry_run
# prints the commands instead of running them. If one process fails, the
# others are stopped and the script exits with its status.
set -euo pipefail
cd "$(dirname "$0")/.."

config="" workdir="" gpus="" num_processes=1 port=12355 install_cuda=0 dry_run=0
extra=()
usage() { sed -n '2,16p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --gpus=*) gpus=${1#*=} ;;
    --num_processes=*) num_processes=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --install_cuda) install_cuda=1 ;;
    --dry_run) dry_run=1 ;;
    --help|-h) usage ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done
if [ -z "$config" ] || [ -z "$workdir" ]; then
  echo "--config and --workdir are required" >&2; usage
fi
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "--num_processes must be a positive integer" >&2; exit 2
fi

if [ -z "$gpus" ]; then
  if command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  elif [ "$dry_run" = 1 ]; then
    gpus=0
  else
    echo "no GPU found (nvidia-smi missing); pass --gpus=..." >&2; exit 1
  fi
fi
IFS=, read -r -a gpu_list <<< "$gpus"
if [ "${#gpu_list[@]}" -lt "$num_processes" ]; then
  echo "$num_processes processes need at least as many GPUs (have $gpus)" >&2
  exit 2
fi

if [ "$dry_run" = 0 ]; then
  source launch/setup_env.sh
  if [ "$install_cuda" = 1 ]; then
    jax_version=$(sed -n 's/^jax==\([^ ]*\).*/\1/p' requirements.txt)
    python -m pip install -q "jax[cuda12]==$jax_version"
  fi
fi

train=(python -m launch.train --config="$config" --workdir="$workdir")
if [ "$num_processes" = 1 ]; then
  if [ "$dry_run" = 1 ]; then
    echo "CUDA_VISIBLE_DEVICES=$gpus ${train[*]} ${extra[*]+${extra[*]}}"
    exit 0
  fi
  CUDA_VISIBLE_DEVICES=$gpus exec "${train[@]}" ${extra[@]+"${extra[@]}"}
fi

# Several processes: GPUs dealt out in contiguous blocks.
per=$(( ${#gpu_list[@]} / num_processes ))
pids=()
# SIGTERM makes the trainer save and exit at its next step; a process stuck in
# a collective whose peer died never gets there, so it is killed after 60 s.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for (( waited = 0; waited < 60; waited++ )); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM
for (( i = 0; i < num_processes; i++ )); do
  mine=$(IFS=,; echo "${gpu_list[*]:$(( i * per )):$per}")
  cmd=("${train[@]}" --coordinator_address="127.0.0.1:$port"
       --num_processes="$num_processes" --process_id="$i"
       ${extra[@]+"${extra[@]}"})
  if [ "$dry_run" = 1 ]; then
    echo "CUDA_VISIBLE_DEVICES=$mine ${cmd[*]} &"
    continue
  fi
  CUDA_VISIBLE_DEVICES=$mine "${cmd[@]}" &
  pids+=($!)
done
[ "$dry_run" = 1 ] && exit 0
status=0
# Wait for the first process to end; if it failed, stop the others.
for (( left = ${#pids[@]}; left > 0; left-- )); do
  if ! wait -n; then
    status=1
    cleanup
  fi
done
exit "$status"
