# Sourced by train.sh and synthesize.sh (not run on its own): checks the launch environment they
# document and sets, for this machine,
#   PYTHON               the interpreter (default: python, else python3);
#   NUM_GPUS_PER_NODE    the processes to start (default: the GPUs torch sees, or 1 without GPUs);
#   TORCHRUN_NODE_ARGS   torchrun's node arguments: --standalone, or one node of NNODES machines
#                        meeting at RDZV_ENDPOINT (c10d) under RDZV_ID (default: $RDZV_ID_DEFAULT).
# A bad value stops the launch with one line naming the variable, exit 2.
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
    # The arguments travel as one word-split string: they must hold no blanks.
    for value in "$RDZV_ENDPOINT" "${RDZV_ID:-$RDZV_ID_DEFAULT}"; do
        case "$value" in
            *[[:space:]]*)
                echo "error: RDZV_ENDPOINT / RDZV_ID '$value': expected no blanks" >&2
                exit 2 ;;
        esac
    done
    TORCHRUN_NODE_ARGS="--nnodes=$NNODES --node_rank=$NODE_RANK --rdzv_backend=c10d"
    TORCHRUN_NODE_ARGS="$TORCHRUN_NODE_ARGS --rdzv_endpoint=$RDZV_ENDPOINT --rdzv_id=${RDZV_ID:-$RDZV_ID_DEFAULT}"
else
    TORCHRUN_NODE_ARGS="--standalone --nnodes=1"
fi
