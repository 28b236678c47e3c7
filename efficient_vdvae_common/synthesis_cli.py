"""The command line both frameworks' synthesize.py share: its flag, and which errors are the user's input
(each is printed as one `error:` line, exit EXIT_BAD_INPUT, with nothing written)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.disk_errors import DiskWriteError
from efficient_vdvae_common.encodings import EncodingsError
from efficient_vdvae_common.fid import FIDError
from efficient_vdvae_common.model_health import BrokenModelError
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_common.variate_masks import DivStatsError
from hparams import ConfigError
from hparams.cli import load_config_or_exit, parse_args

EXIT_BAD_INPUT = 2
# A bad config, a missing or broken checkpoint, div_stats or encodings file, unreadable data, missing
# Inception weights, a full or read-only disk.
INPUT_ERRORS = (BrokenModelError, CheckpointError, ConfigError, DataError, DiskWriteError, DivStatsError,
                EncodingsError, FIDError)


def parse_synthesis_command(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Any]:
    """synthesize.py's arguments and the run's config: its saved hparams with --set applied, not saved
    again (a bad config exits 2 here)."""
    args = parse_args("", argv, parser=_parser(description))
    return args, load_config_or_exit(args, save=False)


def _parser(description: str) -> argparse.ArgumentParser:
    """--posterior-means (hparams.cli adds --config and --set)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--posterior-means", action="store_true",
                        help="reconstruction and encoding: take the posterior means instead of sampled latents "
                             "(repeatable images; the printed NELBO is then not the sampled bound; "
                             "decoding the means of such an encoding retraces its reconstruction)")
    return parser


def posterior_temperature(args: argparse.Namespace) -> float:
    """0 (the posterior means) with --posterior-means, else 1 (sampled latents)."""
    return 0.0 if args.posterior_means else 1.0


def run_synthesis_command(synthesize: Callable[[], Any], leave_process_group: Callable[[], None] | None) -> int:
    """synthesize.py's exit status: 0, or EXIT_BAD_INPUT after printing an input error as one `error:` line.
    `leave_process_group` (None when the caller had joined it before) runs in every case."""
    try:
        synthesize()
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if leave_process_group is not None:
            leave_process_group()
    return 0
