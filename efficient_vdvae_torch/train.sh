#!/bin/sh
# Train Efficient-VDVAE with one process per GPU (torchrun), from any directory:
#   sh train.sh [--config FILE] [--set section.key=value ...]
# Arguments are passed to train.py. Run folders (logs-<name>, checkpoints-<name>)
# are created in the current directory; --config defaults to ./hparams.cfg.
#
# Environment:
#   NUM_GPUS_PER_NODE  processes on this machine. Default: the number of GPUs
#                      torch sees (respecting CUDA_VISIBLE_DEVICES), or 1 without
#                      GPUs (CPU training over gloo). The global batch
#                      train.batch_size is split over all processes;
#                      run.num_gpus is not used to launch (a mismatch is reported).
#   PYTHON             interpreter (default: python, else python3).
#   MAX_RESTARTS       torchrun's --max-restarts (default 0): when a rank dies,
#                      restart all ranks (every node) up to this many times;
#                      they resume from the last checkpoint.
#   Multi-node: set NNODES (machines), NODE_RANK (0..NNODES-1) and
#   RDZV_ENDPOINT (host:port of node 0) on every machine, e.g.
#     NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=10.0.0.1:29500 sh train.sh --config my.cfg
#   which runs torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d
#   --rdzv_endpoint=10.0.0.1:29500 instead of --standalone. RDZV_ID (default
#   efficient_vdvae) tells runs sharing an endpoint apart. Start every node
#   from the same directory of a shared filesystem (checked: all ranks must
#   resume from the same checkpoint); rank 0 alone writes. A node that dies or
#   stops answering ends the run on the others within
#   run.distributed_timeout_seconds (exit 4, one message); run the same
#   command again on every node to resume.
# Stopping: SIGTERM or SIGINT, to this script alone or to its whole process
# group (timeout, scancel, kill -- -PGID, Ctrl-C), reaches every rank; they
# finish the current step, rank 0 writes the checkpoint, and everything exits 0.
# torchrun runs through launch.py, which forwards the signal to the ranks
# instead of killing them; a second Ctrl-C aborts.
set -eu

SCRIPT_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
RDZV_ID_DEFAULT=efficient_vdvae
. "$SCRIPT_DIR/torchrun_env.sh"

case "${MAX_RESTARTS:-0}" in
    '' | *[!0-9]*)
        echo "error: MAX_RESTARTS=$MAX_RESTARTS: expected a whole number (torchrun's --max-restarts)" >&2
        exit 2 ;;
esac
# TORCHRUN_NODE_ARGS is split into its words on purpose.
# shellcheck disable=SC2086
set -- $TORCHRUN_NODE_ARGS --nproc_per_node="$NUM_GPUS_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
    "$SCRIPT_DIR/train.py" "$@"

# A fresh store for the ranks at every (re)start: with torchrun's default, shared with the
# rendezvous, restarted ranks can read the addresses of the ranks they replace and fail to
# connect (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
exec "$PYTHON" "$SCRIPT_DIR/launch.py" "$@"
