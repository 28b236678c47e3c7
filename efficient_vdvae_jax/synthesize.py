"""Inference with a trained JAX Efficient-VDVAE run (SPEC.md section 8), on every device.

    python synthesize.py [--config FILE] [--set section.key=value ...] [--posterior-means]

Run it from the folder that holds the run's logs-<name>/ and
checkpoints-<name>/; the run's saved logs-<name>/hparams-<name>.cfg is used
(--set may still change the [synthesis] settings). synthesis.synthesis_mode
selects the mode: reconstruction, generation, div_stats, encoding or decoding. What each computes,
writes and prints is the same in both frameworks: README.md, "Synthesis"; the
file layout is efficient_vdvae_common/synthesis_files.py's.

Every mode runs on all local devices (the mesh of training); launched as
several JAX processes (the environment of efficient_vdvae_jax/distributed.py:
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or SLURM / Open
MPI), on every process's devices, each process reading its share of every
batch and process 0 writing every file. The numbers and files do not depend
on the device count (efficient_vdvae_common.synthesis_shards).

Outputs and names are those of efficient_vdvae_torch/synthesize.py, and so are
the errors of the input (efficient_vdvae_common.synthesis_cli.INPUT_ERRORS): one
line, exit 2, nothing written.
"""
from __future__ import annotations

import sys

import jax

from efficient_vdvae_common.synthesis_cli import (parse_synthesis_command, posterior_temperature,
                                                  run_synthesis_command)
from efficient_vdvae_jax.distributed import init_distributed, shutdown_distributed
from efficient_vdvae_jax.synthesis import run_synthesis

DESCRIPTION = ("Efficient-VDVAE (JAX) inference: reconstruction, generation, div_stats, encoding or decoding "
               "(synthesis.synthesis_mode), on every device (and every process of a multi-process launch).")


def main(argv: list[str] | None = None) -> int:
    args, hp = parse_synthesis_command(DESCRIPTION, argv)
    # Before anything touches a device: joins the process group the environment describes, if any
    # (a caller that joined one already keeps it).
    joined_here = not jax.distributed.is_initialized()  # (asking jax.process_count() would start the backend)
    init_distributed()
    return run_synthesis_command(lambda: run_synthesis(hp, posterior_temperature=posterior_temperature(args)),
                                 shutdown_distributed if joined_here else None)


if __name__ == "__main__":
    sys.exit(main())
