"""Checks that span several keys: the architecture must be buildable and
the schedules well defined. Each failure names the key to fix."""
from __future__ import annotations

import math
from typing import Any, Callable

from efficient_vdvae_common.sources import SOURCES

from .errors import ConfigError, short_repr

UP_LISTS = (
    "up_strides",
    "up_n_blocks_per_res",
    "up_n_blocks",
    "up_n_layers",
    "up_filters",
    "up_mid_filters_ratio",
    "up_kernel_size",
    "up_skip_filters",
)
DOWN_LISTS = (
    "down_strides",
    "down_n_blocks_per_res",
    "down_n_blocks",
    "down_n_layers",
    "down_filters",
    "down_mid_filters_ratio",
    "down_kernel_size",
    "down_latent_variates",
)


def validate(get: Callable[[str, str], Any]) -> None:
    """Run every cross-key check. `get(section, key)` returns a checked value."""
    _check_architecture(lambda key: get("model", key), get)
    _check_data(get)
    _check_schedules(get)
    _check_synthesis(get)


def _fail(section: str, key: str, value: Any, problem: str) -> None:
    raise ConfigError(f"[{section}] {key} = {short_repr(value)}: {problem}")


def _check_architecture(model: Callable[[str], Any], get: Callable[[str, str], Any]) -> None:
    for group in (UP_LISTS, DOWN_LISTS):
        length = len(model(group[0]))
        for key in group[1:]:
            if len(model(key)) != length:
                _fail("model", key, model(key), f"has {len(model(key))} entries but {group[0]} has {length}")

    up_strides, down_strides = model("up_strides"), model("down_strides")
    if up_strides != down_strides[::-1]:
        _fail("model", "down_strides", down_strides, f"must be up_strides reversed ({short_repr(up_strides[::-1])})")
    total_stride = math.prod(up_strides)
    target_res = get("data", "target_res")
    if target_res % total_stride != 0:
        _fail("data", "target_res", target_res, f"must be divisible by prod(up_strides) = {short_repr(total_stride)}")

    # Widths change only where the resolution changes.
    in_channels = model("input_conv_filters")
    for i, (stride, filters) in enumerate(zip(up_strides, model("up_filters"))):
        if stride == 1 and filters != in_channels:
            _fail("model", "up_filters", model("up_filters"),
                  f"entry {i} is {short_repr(filters)} but a stride-1 level keeps its input width {short_repr(in_channels)}")
        in_channels = filters
    down_filters = model("down_filters")
    in_channels = down_filters[0]
    for i, (stride, filters) in enumerate(zip(down_strides, down_filters)):
        if stride == 1 and filters != in_channels:
            _fail("model", "down_filters", down_filters,
                  f"entry {i} is {short_repr(filters)} but a stride-1 level keeps its input width {short_repr(in_channels)}")
        in_channels = filters

    # The posterior cell halves (f + skip) channels into a layer expecting f.
    skips = model("up_skip_filters")[::-1]
    for i, (skip, filters) in enumerate(zip(skips, down_filters)):
        if skip != filters:
            _fail("model", "up_skip_filters", model("up_skip_filters"),
                  f"reversed, entry {i} is {short_repr(skip)} but down_filters[{i}] is {short_repr(filters)}; they must match")


def _check_data(get: Callable[[str, str], Any]) -> None:
    source, channels = get("data", "dataset_source"), get("data", "channels")
    known = SOURCES[source]
    if known.channels is not None and channels != known.channels:
        _fail("data", "channels", channels, f"{source} images have {known.channels} channel{'s' * (known.channels > 1)}")
    # Binarized MNIST's model crops its padded 32x32 input; other fixed-size sources are checked when
    # their data is read (a model alone may be built at any resolution).
    if known.binarized and get("data", "target_res") != known.model_input_shape[0]:
        resolution = known.model_input_shape[0]
        _fail("data", "target_res", get("data", "target_res"), f"{source} is padded to {resolution}x{resolution}")
    num_bits = get("data", "num_bits")
    if not (1 <= num_bits <= 8 and float(num_bits).is_integer()):
        _fail("data", "num_bits", num_bits, "must be a whole number of bits from 1 to 8")


def _check_schedules(get: Callable[[str, str], Any]) -> None:
    if get("optimizer", "learning_rate_scheme") == "cosine":
        warmup, decay_start = get("optimizer", "warmup_steps"), get("optimizer", "decay_start")
        if warmup > decay_start:
            _fail("optimizer", "warmup_steps", warmup, f"must not exceed decay_start ({short_repr(decay_start)}) for the cosine schedule")
    if get("optimizer", "min_learning_rate") > get("optimizer", "learning_rate"):
        _fail("optimizer", "min_learning_rate", get("optimizer", "min_learning_rate"),
              "must not exceed learning_rate")


def _check_synthesis(get: Callable[[str, str], Any]) -> None:
    n_levels = len(get("model", "down_strides"))
    settings = get("synthesis", "temperature_settings")
    for entry in settings:
        if isinstance(entry, list) and len(entry) != n_levels:
            _fail("synthesis", "temperature_settings", settings,
                  f"a list entry needs one temperature per top-down level ({n_levels}), got {len(entry)}")
    needs_equal_variates = get("synthesis", "synthesis_mode") in ("div_stats", "encoding") or get(
        "synthesis", "mask_reconstruction"
    )
    num_samples = get("synthesis", "num_importance_samples")
    if num_samples > 1 and get("synthesis", "mask_reconstruction"):
        # The bound's proposal is the posterior of every variate; masked-off ones come from the prior.
        _fail("synthesis", "num_importance_samples", num_samples,
              "needs synthesis.mask_reconstruction = False (the bound samples every variate from the posterior)")
    variates = get("model", "down_latent_variates")
    if needs_equal_variates and len(set(variates)) != 1:
        _fail("model", "down_latent_variates", variates,
              "div_stats, encoding and masked reconstruction need the same number of variates in every group")
