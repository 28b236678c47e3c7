#!/bin/sh
# Delete a run so that the next run of the same name starts from scratch:
#   sh reset.sh <run name>     (each implementation folder has a reset.sh that runs this)
# removes logs-<name>/ (TensorBoard events, saved hparams, synthesis outputs),
# the checkpoints checkpoints-<name> (a file in PyTorch, a folder in JAX) and
# checkpoints-<name>.history/ where present
# in the CURRENT directory (where train.py was run), as the original did.
set -eu

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: sh reset.sh <run name>   (deletes logs-<name> and checkpoints-<name> in $(pwd))" >&2
    exit 2
fi
case "$1" in
    */* | . | ..) echo "reset.sh: '$1' is not a run name (no '/' allowed)" >&2; exit 2 ;;
esac

found=0
for path in "logs-$1" "checkpoints-$1" "checkpoints-$1.history"; do
    if [ -e "$path" ]; then
        rm -rf -- "$path"
        echo "removed $(pwd)/$path"
        found=1
    fi
done
if [ "$found" -eq 0 ]; then
    echo "reset.sh: nothing to remove for run '$1' in $(pwd) (no logs-$1 or checkpoints-$1)" >&2
    exit 1
fi
