"""Inference with a trained JAX Efficient-VDVAE run (SPEC.md section 8), on every device.

    python synthesize.py [--config FILE] [--set section.key=value ...] [--posterior-means]

Run it from the folder that holds the run's logs-<name>/ and
checkpoints-<name>/; the run's saved logs-<name>/hparams-<name>.cfg is used
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

Every mode runs on all local devices (the mesh of training); launched as
several JAX processes (the environment of efficient_vdvae_jax/distributed.py:
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or SLURM / Open
MPI), on every process's devices, each process reading its share of every
batch and process 0 writing every file. The numbers and files do not depend
on the device count (efficient_vdvae_common.synthesis_shards).

Outputs and names are those of efficient_vdvae_torch/synthesize.py. Bad
configuration, a missing checkpoint, div_stats or encodings file, a checkpoint with
non-finite weights or outputs, a full or read-only disk: one line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import sys

import jax

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.disk_errors import DiskWriteError
from efficient_vdvae_common.encodings import EncodingsError
from efficient_vdvae_common.fid import FIDError
from efficient_vdvae_common.model_health import BrokenModelError
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_common.variate_masks import DivStatsError
from efficient_vdvae_jax.distributed import init_distributed, shutdown_distributed
from efficient_vdvae_jax.synthesis import run_synthesis
from hparams import ConfigError
from hparams.cli import load_config_or_exit, parse_args

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Efficient-VDVAE (JAX) inference: reconstruction, generation, "
                                                 "div_stats, encoding or decoding (synthesis.synthesis_mode), on every "
                                                 "device (and every process of a multi-process launch).")
    parser.add_argument("--posterior-means", action="store_true",
                        help="reconstruction and encoding: take the posterior means instead of sampled latents "
                             "(repeatable images; the printed NELBO is then not the sampled bound; "
                             "decoding the means of such an encoding retraces its reconstruction)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args("", argv, parser=_parser())
    hp = load_config_or_exit(args, save=False)
    # Before anything touches a device: joins the process group the environment describes, if any
    # (a caller that joined one already keeps it).
    joined_here = not jax.distributed.is_initialized()  # (asking jax.process_count() would start the backend)
    init_distributed()
    try:
        run_synthesis(hp, posterior_temperature=0.0 if args.posterior_means else 1.0)
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
