"""Inference with a trained PyTorch Efficient-VDVAE run (SPEC.md section 8).

    python synthesize.py [--config FILE] [--set section.key=value ...]
    sh synthesize.sh [same arguments]          # one process per GPU (torchrun)
    torchrun --nproc_per_node=N synthesize.py [same arguments]

Run it from the folder that holds the run's logs-<name>/ and
checkpoints-<name>; the run's saved logs-<name>/hparams-<name>.cfg is used
(--set may still change the [synthesis] settings). synthesis.synthesis_mode
selects the mode: reconstruction, generation, div_stats, encoding or decoding. What each computes,
writes and prints is the same in both frameworks: README.md, "Synthesis"; the
file layout is efficient_vdvae_common/synthesis_files.py's.

Under torchrun every mode splits each batch over the ranks (gloo on CPUs,
NCCL on GPUs); the numbers and files equal those of one process, and rank 0
alone writes and prints.

A bad configuration, a missing checkpoint, div_stats or encodings file, a checkpoint
with non-finite weights or outputs, a full or read-only disk
(efficient_vdvae_common.synthesis_cli.INPUT_ERRORS): one line, exit 2, nothing written.
"""
from __future__ import annotations

import sys

from efficient_vdvae_common.synthesis_cli import (parse_synthesis_command, posterior_temperature,
                                                  run_synthesis_command)
from efficient_vdvae_torch.distributed import is_distributed, shutdown_distributed
from efficient_vdvae_torch.synthesis import init_synthesis_ranks, run_synthesis

DESCRIPTION = ("Efficient-VDVAE (PyTorch) inference: reconstruction, generation, div_stats, encoding or decoding "
               "(synthesis.synthesis_mode).")


def main(argv: list[str] | None = None) -> int:
    args, hp = parse_synthesis_command(DESCRIPTION, argv)
    joined_here = not is_distributed()  # a caller that joined a process group already keeps it
    device = init_synthesis_ranks(hp)
    return run_synthesis_command(lambda: run_synthesis(hp, device, posterior_temperature=posterior_temperature(args)),
                                 shutdown_distributed if joined_here else None)


if __name__ == "__main__":
    sys.exit(main())
