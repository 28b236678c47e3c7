#!/bin/sh
# Synthesis (synthesize.py) with one process per GPU (torchrun), from the folder that holds the run:
#   sh synthesize.sh [--config FILE] [--set section.key=value ...] [--posterior-means]
# Arguments are passed to synthesize.py. Every mode splits each batch over the ranks; the
# numbers and files equal those of `python synthesize.py`, and rank 0 alone writes them.
#
# Environment (as train.sh):
#   NUM_GPUS_PER_NODE  processes on this machine. Default: the number of GPUs torch sees
#                      (respecting CUDA_VISIBLE_DEVICES), or 1 without GPUs; on CPUs any
#                      number of processes works (gloo).
#   PYTHON             interpreter (default: python, else python3).
#   Multi-node: NNODES, NODE_RANK (0..NNODES-1) and RDZV_ENDPOINT (host:port of node 0) on
#   every machine, e.g. NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=10.0.0.1:29500 sh synthesize.sh;
#   RDZV_ID (default efficient_vdvae_synthesis) tells runs sharing an endpoint apart. Start
#   every node from the same directory of a shared filesystem.
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
case "${NNODES:-1}" in
    '' | *[!0-9]* | 0 | 0[0-9]*)
        echo "error: NNODES=$NNODES: expected a positive whole number (the machines of the run)" >&2
        exit 2 ;;
esac

if [ "${NNODES:-1}" -gt 1 ]; then
    : "${NODE_RANK:?set NODE_RANK (0..NNODES-1) for a multi-node run}"
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port (node 0) for a multi-node run}"
    case "$NODE_RANK" in
        '' | *[!0-9]*) bad_node_rank=1 ;;
        *) bad_node_rank=$([ "$NODE_RANK" -lt "$NNODES" ] && echo 0 || echo 1) ;;
    esac
    if [ "$bad_node_rank" = 1 ]; then
        echo "error: NODE_RANK=$NODE_RANK: expected 0..$((NNODES - 1)) (this machine among NNODES=$NNODES)" >&2
        exit 2
    fi
    set -- --nnodes="$NNODES" --node_rank="$NODE_RANK" --rdzv_backend=c10d \
        --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-efficient_vdvae_synthesis}" \
        --nproc_per_node="$NUM_GPUS_PER_NODE" "$SCRIPT_DIR/synthesize.py" "$@"
else
    set -- --standalone --nnodes=1 --nproc_per_node="$NUM_GPUS_PER_NODE" "$SCRIPT_DIR/synthesize.py" "$@"
fi

exec "$PYTHON" -m torch.distributed.run "$@"
