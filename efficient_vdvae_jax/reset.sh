#!/bin/sh
# Delete a run: sh reset.sh <run name>   (see ../scripts/reset_run.sh)
exec sh "$(dirname -- "$0")/../scripts/reset_run.sh" "$@"
