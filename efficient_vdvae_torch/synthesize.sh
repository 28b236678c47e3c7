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
RDZV_ID_DEFAULT=efficient_vdvae_synthesis
. "$SCRIPT_DIR/torchrun_env.sh"

# TORCHRUN_NODE_ARGS is split into its words on purpose.
# shellcheck disable=SC2086
set -- $TORCHRUN_NODE_ARGS --nproc_per_node="$NUM_GPUS_PER_NODE" "$SCRIPT_DIR/synthesize.py" "$@"

exec "$PYTHON" -m torch.distributed.run "$@"
