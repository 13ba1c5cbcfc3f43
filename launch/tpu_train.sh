#!/usr/bin/env bash
# Trains on a Cloud TPU VM (one host or a multi-host pod slice) with gcloud:
#   1. creates the TPU VM unless it exists;
#   2. puts the code on every worker: copies this checkout (the files git tracks
#      plus untracked, non-ignored ones) or, with --git_url, clones a repository;
#   3. sets up Python 3.11 + ./.venv + jax[tpu] on every worker;
#   4. runs launch.train on all workers at once (--worker=all); jax.distributed
#      connects them and the mesh spans every chip of every host.
#
#   bash launch/tpu_train.sh --name=hcmtfg-v4 --zone=us-central2-b \
#       --accelerator_type=v4-16 --version=tpu-ubuntu2204-base \
#       --config=configs/vgnet.py:lrw --workdir=gs://BUCKET/runs/vgnet_lrw \
#       [--project=PROJECT] [--spot] [--git_url=URL [--git_ref=REF]] \
#       [--detach] [--dry_run] [-- --config.data.data_dir=gs://BUCKET/tfds ...]
#
# Arguments after `--` go to launch.train unchanged (config overrides). The
# workdir should be a gs:// path every worker can write. --dry_run prints every
# command instead of running it. --detach starts training with nohup on each
# worker (log in ~/hcmtfg_train.log) and returns. The trainer resumes from the
# workdir's newest checkpoint, so running this again after a preemption
# continues the run.
set -euo pipefail
cd "$(dirname "$0")/.."

name="" zone="" accelerator_type="v4-8" version="tpu-ubuntu2204-base"
project="" config="" workdir="" git_url="" git_ref="" spot=0 detach=0 dry_run=0
python_bin="python3.11"
remote_dir="hcmtfg"
extra=()
usage() { sed -n '2,23p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator_type=*) accelerator_type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --git_url=*) git_url=${1#*=} ;;
    --git_ref=*) git_ref=${1#*=} ;;
    --python=*) python_bin=${1#*=} ;;
    --spot) spot=1 ;;
    --detach) detach=1 ;;
    --dry_run) dry_run=1 ;;
    --help|-h) usage ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done
for required in name zone config workdir; do
  if [ -z "${!required}" ]; then
    echo "--$required is required" >&2; usage
  fi
done

jax_version=$(sed -n 's/^jax==\([^ ]*\).*/\1/p' requirements.txt)
gcloud_opts=(--zone="$zone")
[ -n "$project" ] && gcloud_opts+=(--project="$project")

# One shell word, single-quoted only when it needs quoting.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
# Prints a command (shell-quoted) in dry-run mode, else runs it.
run() {
  if [ "$dry_run" = 1 ]; then
    local sep=""
    for word in "$@"; do printf '%s%s' "$sep" "$(quote "$word")"; sep=" "; done
    printf '\n'
  else
    "$@"
  fi
}
on_all_workers() {  # on_all_workers COMMAND_STRING
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud_opts[@]}" --worker=all \
    --command="$1"
}

# 1. The TPU VM.
create=(gcloud compute tpus tpu-vm create "$name" "${gcloud_opts[@]}"
        --accelerator-type="$accelerator_type" --version="$version")
[ "$spot" = 1 ] && create+=(--spot)
if [ "$dry_run" = 1 ]; then
  echo "# unless it exists (gcloud compute tpus tpu-vm describe $name):"
  run "${create[@]}"
elif ! gcloud compute tpus tpu-vm describe "$name" "${gcloud_opts[@]}" \
    >/dev/null 2>&1; then
  run "${create[@]}"
fi

# 2. The code on every worker.
if [ -n "$git_url" ]; then
  checkout="rm -rf ~/$remote_dir && git clone -q $(printf '%q' "$git_url") ~/$remote_dir"
  [ -n "$git_ref" ] && checkout+=" && git -C ~/$remote_dir checkout -q $(printf '%q' "$git_ref")"
  on_all_workers "$checkout"
else
  archive=$(mktemp -u /tmp/hcmtfg_code.XXXXXX).tar.gz
  if [ "$dry_run" = 1 ]; then
    echo "git ls-files -z --cached --others --exclude-standard | tar czf $archive --null -T -"
  else
    git ls-files -z --cached --others --exclude-standard \
      | tar czf "$archive" --null -T -
    trap 'rm -f "$archive"' EXIT
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$name:hcmtfg_code.tar.gz" \
    "${gcloud_opts[@]}" --worker=all
  on_all_workers "rm -rf ~/$remote_dir && mkdir -p ~/$remote_dir && tar xzf ~/hcmtfg_code.tar.gz -C ~/$remote_dir"
fi

# 3. Environment: Python 3.11, ./.venv with the pinned requirements, TPU jax.
setup="(command -v $python_bin >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $python_bin ${python_bin}-venv))"
setup+=" && cd ~/$remote_dir && PYTHON=$python_bin source launch/setup_env.sh"
setup+=" && pip install -q 'jax[tpu]==$jax_version'"
on_all_workers "$setup"

# 4. Train on all workers together.
train="cd ~/$remote_dir && source .venv/bin/activate && python -m launch.train"
train+=" --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") --jax_distributed"
for arg in ${extra[@]+"${extra[@]}"}; do
  train+=" $(printf '%q' "$arg")"
done
if [ "$detach" = 1 ]; then
  train="nohup bash -c $(printf '%q' "$train") > ~/hcmtfg_train.log 2>&1 &"
fi
on_all_workers "$train"
if [ "$detach" = 1 ] && [ "$dry_run" = 0 ]; then
  echo "training in the background; follow it with:"
  echo "  gcloud compute tpus tpu-vm ssh $name --zone=$zone --worker=0 --command='tail -f ~/hcmtfg_train.log'"
fi
