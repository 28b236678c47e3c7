"""Inference with a trained PyTorch Efficient-VDVAE run (SPEC.md section 8).

    python synthesize.py [--config FILE] [--set section.key=value ...]
    sh synthesize.sh [same arguments]          # one process per GPU (torchrun)
    torchrun --nproc_per_node=N synthesize.py [same arguments]

Run it from the folder that holds the run's logs-<name>/ and
checkpoints-<name>; the run's saved logs-<name>/hparams-<name>.cfg is used
(--set may still change the [synthesis] settings). synthesis.synthesis_mode
selects the mode:

- reconstruction: NELBO, KL, reconstruction and SSIM over the synthesis set;
  images under logs-<name>/synthesis-images/reconstructed/
  (mask_reconstruction needs div_stats first);
- generation: prior samples per temperature setting under
  logs-<name>/synthesis-images/generated/<setting>/ (with synthesis.compute_fid,
  their FID against the synthesis set in generated/fid.json);
- div_stats: per-variate KL over a subset of the train set, written to
  logs-<name>/latents/div_stats.npy (an older logs-<name>/div_stats.npy is
  still read);
- encoding: posteriors of the active variates of every train image, written
  to logs-<name>/latents/encodings.npz (needs div_stats first);
- decoding: images from an encodings file (synthesis.decoding_encodings_path,
  default logs-<name>/latents/encodings.npz) per temperature setting under
  logs-<name>/synthesis-images/decoded/<setting>/.

Under torchrun every mode splits each batch over the ranks (gloo on CPUs,
NCCL on GPUs); the numbers and files equal those of one process, and rank 0
alone writes and prints.

Bad configuration, a missing checkpoint, div_stats or encodings file, a checkpoint with
non-finite weights or outputs, a full or read-only disk: one line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import sys

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.disk_errors import DiskWriteError
from efficient_vdvae_common.encodings import EncodingsError
from efficient_vdvae_common.fid import FIDError
from efficient_vdvae_common.model_health import BrokenModelError
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_common.variate_masks import DivStatsError
from efficient_vdvae_torch.distributed import is_distributed, shutdown_distributed
from efficient_vdvae_torch.synthesis import init_synthesis_ranks, run_synthesis
from hparams import ConfigError
from hparams.cli import load_config_or_exit, parse_args

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Efficient-VDVAE (PyTorch) inference: reconstruction, "
                                                 "generation, div_stats, encoding or decoding (synthesis.synthesis_mode).")
    parser.add_argument("--posterior-means", action="store_true",
                        help="reconstruction and encoding: take the posterior means instead of sampled latents "
                             "(repeatable images; the printed NELBO is then not the sampled bound; "
                             "decoding the means of such an encoding retraces its reconstruction)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args("", argv, parser=_parser())
    hp = load_config_or_exit(args, save=False)
    joined_here = not is_distributed()  # a caller that joined a process group already keeps it
    device = init_synthesis_ranks(hp)
    try:
        run_synthesis(hp, device, posterior_temperature=0.0 if args.posterior_means else 1.0)
    except (BrokenModelError, CheckpointError, ConfigError, DataError, DiskWriteError, DivStatsError,
            EncodingsError, FIDError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if joined_here:
            shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
