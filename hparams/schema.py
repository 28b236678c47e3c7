"""Every configuration key: its type, allowed values and, for keys this
project added (or that old configs lack), its default.

Keys of the original configuration files have no default: a file without
one of them is an error, so a typo never silently falls back to a value.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, short_repr

REQUIRED = object()

DATASET_SOURCES = ("binarized_mnist", "cifar-10", "imagenet", "celebA", "celebAHQ", "ffhq", "custom")
DISTRIBUTION_BASES = ("std", "logstd")
OPTIMIZERS = ("Adamax", "Adam", "RAdam", "Radam")
# native: each framework its own original's initialisation (efficient_vdvae_common/initialization.py).
INITIALIZERS = ("native", "torch", "flax")
LEARNING_RATE_SCHEMES = ("constant", "cosine", "exponential", "noam")
VARIATION_SCHEDULES = ("None", "Logistic", "Linear")
SYNTHESIS_MODES = ("reconstruction", "generation", "div_stats", "encoding", "decoding")
OUTPUT_SAMPLINGS = ("sample", "mean")


def unknown_choice(key: str, value: Any, choices: tuple) -> ValueError:
    """The error of a model function given a value of `key` outside `choices`. A loaded config never gets
    there (validation rejects it first); code that builds a model from its own values does."""
    return ValueError(f"{key} = {value!r}: expected one of {choices}")


@dataclass(frozen=True)
class Key:
    """One configuration key. `kind` names a checker in `_CHECKERS`."""

    kind: str
    default: Any = REQUIRED
    choices: tuple | None = None


SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "name": Key("run_name"),
        "seed": Key("seed"),
        "num_gpus": Key("positive_int"),
        "num_cpus": Key("positive_int"),
        "max_allowed_checkpoints": Key("positive_int"),
        # Added by this project: speed and memory switches, off by default.
        "mixed_precision": Key("bool", False),
        "compile": Key("bool", False),
        "channels_last": Key("bool", False),
        "gradient_checkpointing": Key("bool", False),
        # Added by this project: how long a training process waits for the others before the run
        # ends with a lost-process message (a dead or unreachable node).
        "distributed_timeout_seconds": Key("positive_float", 600.0),
    },
    "data": {
        "dataset_source": Key("str", choices=DATASET_SOURCES),
        "train_data_path": Key("str"),
        "val_data_path": Key("str"),
        "synthesis_data_path": Key("str"),
        "target_res": Key("positive_int"),
        "channels": Key("positive_int", choices=(1, 3)),
        "num_bits": Key("float"),
        "random_horizontal_flip": Key("bool"),
        # Added by this project.
        "skip_corrupt_images": Key("bool", False),
        # Where cifar-10 and binarized_mnist are downloaded to and read from.
        "download_dir": Key("str", "../datasets"),
        "full_test_set": Key("bool", False),
    },
    "model": {
        "stable_init": Key("bool"),
        "initialize_prior_weights_as_zero": Key("bool"),
        "use_1x1_conv": Key("bool"),
        "distribution_base": Key("str", choices=DISTRIBUTION_BASES),
        # Older configs of the original predate the two output_* keys.
        "output_distribution_base": Key("str", "std", choices=DISTRIBUTION_BASES),
        "gradient_smoothing_beta": Key("positive_float"),
        "output_gradient_smoothing_beta": Key("positive_float", 0.6931472),
        "input_conv_filters": Key("positive_int"),
        "input_kernel_size": Key("kernel"),
        "up_strides": Key("list_positive_int"),
        "up_n_blocks_per_res": Key("list_non_negative_int"),
        "up_n_blocks": Key("list_non_negative_int"),
        "up_n_layers": Key("list_non_negative_int"),
        "up_filters": Key("list_positive_int"),
        "up_mid_filters_ratio": Key("list_positive_float"),
        "up_kernel_size": Key("list_kernel"),
        "up_skip_filters": Key("list_positive_int"),
        "use_residual_distribution": Key("bool"),
        "down_strides": Key("list_positive_int"),
        "down_n_blocks_per_res": Key("list_non_negative_int"),
        "down_n_blocks": Key("list_non_negative_int"),
        "down_n_layers": Key("list_non_negative_int"),
        "down_filters": Key("list_positive_int"),
        "down_mid_filters_ratio": Key("list_positive_float"),
        "down_kernel_size": Key("list_kernel"),
        "down_latent_variates": Key("list_positive_int"),
        "output_kernel_size": Key("kernel"),
        "num_output_mixtures": Key("positive_int"),
        # Added by this project: which original's weight initialisation to use.
        "initializer": Key("str", "native", choices=INITIALIZERS),
    },
    "loss": {
        "min_mol_logscale": Key("float"),
        "variation_schedule": Key("str", choices=VARIATION_SCHEDULES),
        "vae_beta_anneal_start": Key("non_negative_int"),
        "vae_beta_anneal_steps": Key("positive_int"),
        "vae_beta_min": Key("non_negative_float"),
        "vae_beta_activation_steps": Key("non_negative_int"),
        "vae_beta_growth_rate": Key("float"),
        "use_gamma_schedule": Key("bool"),
        "gamma_max_steps": Key("non_negative_int"),
        "scaled_gamma": Key("bool"),
        "use_weight_decay": Key("bool"),
        "l2_weight": Key("non_negative_float"),
    },
    "metrics": {
        "latent_active_threshold": Key("non_negative_float"),
    },
    "optimizer": {
        "type": Key("str", choices=OPTIMIZERS),
        "learning_rate_scheme": Key("str", choices=LEARNING_RATE_SCHEMES),
        "learning_rate": Key("positive_float"),
        "warmup_steps": Key("non_negative_float"),
        "decay_steps": Key("positive_int"),
        "decay_start": Key("non_negative_int"),
        "min_learning_rate": Key("non_negative_float"),
        "decay_rate": Key("positive_float"),
        "beta1": Key("unit_float"),
        "beta2": Key("unit_float"),
        "epsilon": Key("non_negative_float"),
        "clip_gradient_norm": Key("bool"),
        "gradient_clip_norm_value": Key("positive_float"),
        "gradient_skip": Key("bool"),
        "gradient_skip_threshold": Key("positive_float"),
        # Added by this project: stop a run whose every update is skipped.
        "max_consecutive_skips": Key("positive_int", 100),
    },
    "init": {
        "batch_size": Key("positive_int"),
    },
    "train": {
        "total_train_steps": Key("non_negative_int"),
        "batch_size": Key("positive_int"),
        "ema_decay": Key("unit_float"),
        "resume_from_ema": Key("bool"),
        "logging_interval_in_steps": Key("positive_int"),
        "checkpoint_and_eval_interval_in_steps": Key("positive_int"),
    },
    "val": {
        "n_samples_for_validation": Key("positive_int"),
        "batch_size": Key("positive_int"),
    },
    "synthesis": {
        "synthesis_mode": Key("str", choices=SYNTHESIS_MODES),
        "load_ema_weights": Key("bool"),
        "variate_masks_quantile": Key("fraction"),
        "save_target_in_reconstruction": Key("bool"),
        "mask_reconstruction": Key("bool"),
        "div_stats_subset_ratio": Key("fraction"),
        "n_generation_batches": Key("positive_int"),
        "temperature_settings": Key("temperature_settings"),
        "output_temperature": Key("temperature"),
        # Added by this project: samples per image of the importance-weighted NLL (1: the NELBO only).
        "num_importance_samples": Key("positive_int", 1),
        # Added by this project: decoding mode's encodings file ('' = logs-<name>/latents/encodings.npz) and the
        # temperature of its samples of the stored posteriors (0 = their means).
        "decoding_encodings_path": Key("str", ""),
        "decoding_posterior_temperature": Key("temperature", 0.0),
        # Added by this project: FID of generation's samples against the synthesis set, with the Inception
        # weights at inception_weights ('' = torch hub's cache, where pytorch-fid keeps them).
        "compute_fid": Key("bool", False),
        "inception_weights": Key("str", ""),
        "batch_size": Key("positive_int"),
        # Added by this project: images drawn from the output distribution, or its mean.
        "output_sampling": Key("str", "sample", choices=OUTPUT_SAMPLINGS),
    },
}

SECTIONS = tuple(SCHEMA)

# Data keys that change neither the model nor the data it is trained on, so
# that they stay switchable on a saved run: where the data is (paths move
# between machines), whether unreadable images are skipped, and which test
# set synthesis and evaluation use.
SWITCHABLE_IN_SAVED_RUN = {
    ("data", "train_data_path"),
    ("data", "val_data_path"),
    ("data", "synthesis_data_path"),
    ("data", "download_dir"),
    ("data", "skip_corrupt_images"),
    ("data", "full_test_set"),
}

# Keys that define what a saved run IS: an override may not change them.
# Every model key, and every data key not listed above (a new data key is
# frozen until it is known to be harmless).
FROZEN_IN_SAVED_RUN = {
    (section, key)
    for section in ("model", "data")
    for key in SCHEMA[section]
    if (section, key) not in SWITCHABLE_IN_SAVED_RUN
}


def check_value(section: str, key: str, value: Any) -> Any:
    """Type-check one value; returns it normalised (int -> float for floats,
    list -> tuple for kernel sizes). Raises ConfigError naming the key."""
    spec = SCHEMA[section][key]
    try:
        value = _CHECKERS[spec.kind](value)
    except _Invalid as problem:
        raise ConfigError(f"[{section}] {key} = {short_repr(value)}: {problem}") from None
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(choice) for choice in spec.choices)
        raise ConfigError(f"[{section}] {key} = {short_repr(value)}: must be one of {allowed}")
    return value


class _Invalid(Exception):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected True or False")
    return value


def _as_int(value: Any) -> int:
    # 1e5 is a float in Python; accept it where a count is expected.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not _is_int(value):
        raise _Invalid("expected an integer")
    return value


def _as_float(value: Any) -> float:
    if not _is_number(value):
        raise _Invalid("expected a number")
    try:
        number = float(value)
    except OverflowError:
        raise _Invalid("expected a finite number (this one is too large for a float)") from None
    # inf and nan (and 1e400, which reads as inf) would only surface as NaN losses or images.
    if not math.isfinite(number):
        raise _Invalid("expected a finite number (not inf or nan)")
    return number


def _as_temperature(value: Any) -> float:
    number = _as_float(value)
    if number < 0:
        raise _Invalid("expected a non-negative temperature")
    return number


def _bounded(convert, low=None, high=None, low_open=False, description=""):
    def check(value: Any):
        value = convert(value)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            raise _Invalid(f"expected {description}")
        return value

    return check


def _as_kernel(value: Any):
    if _is_int(value):
        if value < 1:
            raise _Invalid("kernel size must be positive")
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value):
        return tuple(value)
    raise _Invalid("expected a kernel size: a positive int or a pair (kh, kw)")


def _list_of(check):
    def check_list(value: Any) -> list:
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise _Invalid("expected a non-empty list")
        checked = []
        for index, element in enumerate(value):
            try:
                checked.append(check(element))
            except _Invalid as problem:
                raise _Invalid(f"entry {index} ({short_repr(element)}): {problem}") from None
        return checked

    return check_list


def _as_temperature_settings(value: Any) -> list:
    """A list of entries: a number, a list of numbers (one per top-level
    block; its length is checked against the model later), or
    ('linear', start, end)."""

    def check_entry(entry: Any):
        if _is_number(entry):
            return _as_temperature(entry)
        if isinstance(entry, tuple):
            if len(entry) == 3 and entry[0] == "linear" and _is_number(entry[1]) and _is_number(entry[2]):
                return ("linear", _as_temperature(entry[1]), _as_temperature(entry[2]))
            raise _Invalid("a tuple entry must be ('linear', start, end)")
        if isinstance(entry, list) and entry and all(_is_number(t) for t in entry):
            return [_as_temperature(t) for t in entry]
        raise _Invalid("expected a number, a list of numbers or ('linear', start, end)")

    return _list_of(check_entry)(value)


# Names derived from a run's name (`checkpoints-<name>.history`, temporary files
# beside them such as `.hparams-<name>.cfg.XXXXXXXX.tmp`) add up to about 40 bytes
# to it, and file names have at most 255 bytes on common file systems.
MAX_RUN_NAME_BYTES = 200


def _as_run_name(value: Any) -> str:
    """A run name becomes part of folder names: `logs-<name>`, `checkpoints-<name>`."""
    name = _as_str(value)
    if name in ("", ".", ".."):
        raise _Invalid("a run name must be a plain, non-empty name")
    for character, description in (("\0", "a NUL character"), ("/", "'/'")):
        if character in name:
            raise _Invalid(f"a run name cannot contain {description} (it names folders: logs-<name>)")
    if any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise _Invalid("a run name cannot contain control characters (it names folders: logs-<name>)")
    try:
        size = len(os.fsencode(name))
    except UnicodeError:
        raise _Invalid("a run name must be encodable as a file name") from None
    if size > MAX_RUN_NAME_BYTES:
        raise _Invalid(f"a run name has at most {MAX_RUN_NAME_BYTES} bytes (this one has {size}), so that "
                       "checkpoints-<name> and its temporary files fit the file system's 255-byte limit")
    return name


_positive_int = _bounded(_as_int, 0, low_open=True, description="a positive integer")
_non_negative_int = _bounded(_as_int, 0, description="a non-negative integer")
_positive_float = _bounded(_as_float, 0.0, low_open=True, description="a positive number")
_non_negative_float = _bounded(_as_float, 0.0, description="a non-negative number")

_CHECKERS = {
    "str": _as_str,
    "run_name": _as_run_name,
    # numpy's generators take seeds in [0, 2**32).
    "seed": _bounded(_as_int, 0, 2**32 - 1, description="a seed in [0, 2**32)"),
    "bool": _as_bool,
    "int": _as_int,
    "float": _as_float,
    "positive_int": _positive_int,
    "non_negative_int": _non_negative_int,
    "positive_float": _positive_float,
    "non_negative_float": _non_negative_float,
    "unit_float": _bounded(_as_float, 0.0, 1.0, description="a number in [0, 1]"),
    "fraction": _bounded(_as_float, 0.0, 1.0, low_open=True, description="a number in (0, 1]"),
    "kernel": _as_kernel,
    "list_positive_int": _list_of(_positive_int),
    "list_non_negative_int": _list_of(_non_negative_int),
    "list_positive_float": _list_of(_positive_float),
    "list_kernel": _list_of(_as_kernel),
    "temperature_settings": _as_temperature_settings,
    "temperature": _as_temperature,
}
