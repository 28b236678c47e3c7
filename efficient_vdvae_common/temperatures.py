"""Prior temperatures for generation (SPEC.md section 8, synthesis.temperature_settings).

An entry is a float (one temperature for every top-level block), a list with
one float per top-level block, or ('linear', a, b): T_i = a + i * (b - a) / n
with n = len(down_strides) (divided by n, not n - 1, as in the originals).
"""
from __future__ import annotations

from numbers import Real
from typing import Sequence

KEY = "synthesis.temperature_settings"


def expand_temperature_setting(setting, num_levels: int) -> list[float]:
    """One temperature per top-level block for one `temperature_settings` entry."""
    if isinstance(setting, Real) and not isinstance(setting, bool):
        return [float(setting)] * num_levels
    if isinstance(setting, tuple) and len(setting) == 3 and setting[0] == "linear":
        start, end = float(setting[1]), float(setting[2])
        return [start + i * (end - start) / num_levels for i in range(num_levels)]
    if isinstance(setting, list) and all(isinstance(t, Real) and not isinstance(t, bool) for t in setting):
        if len(setting) != num_levels:
            raise ValueError(f"{KEY}: the list {setting} needs one temperature per top-level block "
                             f"({num_levels} = len(model.down_strides)), got {len(setting)}")
        return [float(t) for t in setting]
    raise ValueError(f"{KEY}: entry {setting!r} is not a float, a list of floats or ('linear', start, end)")


def expand_temperature_settings(settings: Sequence, num_levels: int) -> list[list[float]]:
    """Every entry of `temperature_settings` expanded (see expand_temperature_setting)."""
    if not isinstance(settings, (list, tuple)):
        raise ValueError(f"{KEY} must be a list of entries, got {settings!r}")
    return [expand_temperature_setting(s, num_levels) for s in settings]


def per_group_temperatures(temperatures: float | Sequence, blocks_per_level: Sequence[int]) -> list:
    """One prior temperature per latent group, from one per top-level block (or one for all).

    A top-level block's temperature also covers its followers; blocks_per_level
    is model.down_n_blocks_per_res. The values are kept as given (floats, or
    framework scalars inside a traced function).
    """
    n_levels = len(blocks_per_level)
    if isinstance(temperatures, (int, float)):
        temperatures = [temperatures] * n_levels
    if len(temperatures) != n_levels:
        raise ValueError(f"temperatures: expected {n_levels} values (one per top-level block, i.e. per entry of "
                         f"model.down_strides), got {len(temperatures)}")
    return [temperature for temperature, followers in zip(temperatures, blocks_per_level)
            for _ in range(1 + followers)]
