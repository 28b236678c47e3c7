#!/bin/sh
# Start an interactive container on all GPUs with this repository, the
# datasets and the run folders mounted. Build the image first:
#   docker build -f build/Dockerfile -t efficient-vdvae .
set -e
[ $# -eq 0 ] && set -- bash
here=$(cd "$(dirname "$0")" && pwd)
docker run --rm -it --gpus all --ipc=host \
    -v "$here":/workspace/efficient-vdvae \
    -w /workspace/efficient-vdvae \
    efficient-vdvae "$@"
