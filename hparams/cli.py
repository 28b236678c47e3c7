"""Command-line handling shared by every entry script.

    python train.py --config ../egs/cifar10_baseline.cfg --set train.batch_size=16 run.name=try1

A bad configuration prints one line naming the culprit and exits with
status 2 before anything is written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from efficient_vdvae_common.disk_errors import DiskWriteError

from .config import Config
from .errors import ConfigError
from .saved_run import load_run_config

EXIT_CONFIG_ERROR = 2


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--config",
        default="./hparams.cfg",
        help="configuration file (default: ./hparams.cfg); a run that already has "
        "logs-<name>/hparams-<name>.cfg reads that saved copy instead",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override settings, e.g. --set train.batch_size=16 run.name=try1",
    )
    return parser


def load_config_or_exit(
    args: argparse.Namespace, *, save: bool, is_writer: bool = True
) -> Config:
    """The run's configuration, or exit 2 with a one-line message (also when its saved copy cannot be
    written: a full or read-only disk)."""
    try:
        return load_run_config(args.config, args.overrides, save=save, is_writer=is_writer)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    except DiskWriteError as error:  # the saved copy of the config could not be written
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def parse_args(
    description: str, argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parser = parser or argparse.ArgumentParser(description=description)
    add_config_arguments(parser)
    return parser.parse_args(argv)
