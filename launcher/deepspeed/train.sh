#!/usr/bin/env bash
# Full-parameter fine-tune with the DeepSpeed launcher: one node, or several with a hostfile.
#
#   launcher/deepspeed/train.sh CONFIG [launcher flags] [--set KEY=VALUE ...] [--resume]
#
# Launcher flags (everything else goes to `python -m safeft.train`):
#   --num_gpus N        processes per node (default: every visible GPU; on CPU set DS_ACCELERATOR=cpu)
#   --num_nodes N       nodes to use from the hostfile (default: all of them)
#   --hostfile FILE     "host slots=N" lines; multi-node needs passwordless ssh and the same paths everywhere
#   --master_addr ADDR  rank-0 host (default: first host of the hostfile, else 127.0.0.1)
#   --master_port PORT  default 29500
#   --include/--exclude SPEC   DeepSpeed's host/GPU selection, e.g. "host1:0,1"
#
# Examples:
#   launcher/deepspeed/train.sh configs/examples/tiny.yaml --num_gpus 2           # DS_ACCELERATOR=cpu on CPU
#   launcher/deepspeed/train.sh my.yaml --hostfile hosts.txt --set train.lr=2e-5
# The config is checked for the resulting world size before any process starts.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
CONFIG="$1"; shift
PYTHON="${PYTHON:-python}"
launcher=() train=() num_gpus="" num_nodes="" hostfile=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_gpus|--num_nodes|--hostfile|--master_addr|--master_port|--include|--exclude)
      [[ $# -ge 2 ]] || { echo "train.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in --num_gpus) num_gpus="$2";; --num_nodes) num_nodes="$2";; --hostfile) hostfile="$2";; esac
      launcher+=("$1" "$2"); shift 2;;
    *) train+=("$1"); shift;;
  esac
done

# World size the launcher will create: hostfile slots (first --num_nodes hosts) or --num_gpus on this node.
if [[ -n "$hostfile" ]]; then
  [[ -f "$hostfile" ]] || { echo "train.sh: hostfile $hostfile not found" >&2; exit 2; }
  mapfile -t slots < <(grep -v '^\s*#' "$hostfile" | grep -o 'slots=[0-9]*' | cut -d= -f2)
  [[ -n "$num_nodes" ]] && slots=("${slots[@]:0:$num_nodes}")
  world=0; for s in "${slots[@]}"; do world=$(( world + ${num_gpus:-$s} )); done
elif [[ -n "$num_gpus" ]]; then
  world="$num_gpus"
elif [[ "${DS_ACCELERATOR:-}" != cpu ]] && command -v nvidia-smi >/dev/null; then
  world=$(nvidia-smi -L | wc -l)
else
  world=1; launcher+=(--num_gpus 1)
fi

"$PYTHON" -m safeft.train "$CONFIG" "${train[@]}" --check-only --world-size "$world"
exec "$PYTHON" -m deepspeed.launcher.runner "${launcher[@]}" --no_local_rank --module safeft.train "$CONFIG" "${train[@]}"
