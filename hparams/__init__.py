"""This project's configuration library.

Reads the `.cfg` files of the original Efficient-VDVAE (see HPARAMS.md),
safely: values are evaluated without `eval`, every key is checked at
start-up, and a run's configuration is saved once and reused.

    from hparams import load_config
    hp = load_config("egs/cifar10_baseline.cfg", overrides=["train.batch_size=16"])
    hp.model.up_strides
"""
from .config import Config, Section, load_config
from .errors import ConfigError, MissingKeyError
from .registry import HParams
from .saved_run import (
    checkpoints_path,
    load_run_config,
    logs_dir,
    saved_config_path,
)

__all__ = [
    "Config",
    "ConfigError",
    "HParams",
    "MissingKeyError",
    "Section",
    "checkpoints_path",
    "load_config",
    "load_run_config",
    "logs_dir",
    "saved_config_path",
]
