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
#   Multi-node: set NNODES (machines), NODE_RANK (0..NNODES-1) and
#   RDZV_ENDPOINT (host:port of node 0) on every machine, e.g.
#     NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=10.0.0.1:29500 sh train.sh --config my.cfg
#   which runs torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d
#   --rdzv_endpoint=10.0.0.1:29500 instead of --standalone.
# Stopping: SIGTERM or SIGINT, to this script alone or to its whole process
# group (timeout, scancel, kill -- -PGID, Ctrl-C), reaches every rank; they
# finish the current step, rank 0 writes the checkpoint, and everything exits 0.
# torchrun runs through launch.py, which forwards the signal to the ranks
# instead of killing them; a second Ctrl-C aborts.
set -eu

SCRIPT_DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

if [ -z "${NUM_GPUS_PER_NODE:-}" ]; then
    NUM_GPUS_PER_NODE=$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
case "$NUM_GPUS_PER_NODE" in
    '' | *[!0-9]* | 0 | 0[0-9]*)
        echo "error: NUM_GPUS_PER_NODE=$NUM_GPUS_PER_NODE: expected a positive whole number (the processes to start on this machine)" >&2
        exit 2 ;;
esac

if [ "${NNODES:-1}" -gt 1 ]; then
    : "${NODE_RANK:?set NODE_RANK (0..NNODES-1) for a multi-node run}"
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port (node 0) for a multi-node run}"
    set -- --nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d \
        --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-efficient_vdvae}" \
        --nproc_per_node="$NUM_GPUS_PER_NODE" "$SCRIPT_DIR/train.py" "$@"
else
    set -- --standalone --nnodes=1 --nproc_per_node="$NUM_GPUS_PER_NODE" "$SCRIPT_DIR/train.py" "$@"
fi

exec "$PYTHON" "$SCRIPT_DIR/launch.py" "$@"
