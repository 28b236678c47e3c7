"""Expansion of synthesis.temperature_settings entries."""
from __future__ import annotations

import pytest

from efficient_vdvae_common.temperatures import (expand_temperature_setting, expand_temperature_settings,
                                                 per_group_temperatures)


def test_float_list_and_linear_entries():
    assert expand_temperature_setting(0.8, 3) == [0.8, 0.8, 0.8]
    assert expand_temperature_setting(1, 2) == [1.0, 1.0]
    assert expand_temperature_setting([0.5, 0.6, 0.7], 3) == [0.5, 0.6, 0.7]
    # T_i = a + i * (b - a) / n: divided by n (4), so the last block stops short of b.
    assert expand_temperature_setting(("linear", 0.6, 1.0), 4) == pytest.approx([0.6, 0.7, 0.8, 0.9])


def test_reference_config_settings(reference_config):
    settings = expand_temperature_settings(reference_config.synthesis.temperature_settings, 7)
    assert len(settings) == 9 and all(len(s) == 7 for s in settings)
    assert settings[5] == pytest.approx([0.9 - i * 0.2 / 7 for i in range(7)])


@pytest.mark.parametrize("bad", [[0.5, 0.6], ("cosine", 0.1, 0.2), "hot", True])
def test_bad_entries_name_the_key(bad):
    with pytest.raises(ValueError, match="synthesis.temperature_settings"):
        expand_temperature_setting(bad, 3)


def test_followers_share_their_top_level_temperature(reference_config):
    assert per_group_temperatures([0.1, 0.2, 0.3], [0, 2, 1]) == [0.1, 0.2, 0.2, 0.2, 0.3, 0.3]
    # The reference config: down_n_blocks_per_res = [0, 0, 1, 0, 0, 2, 0], written out by hand.
    blocks = reference_config.model.down_n_blocks_per_res
    assert per_group_temperatures([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], blocks) == [
        0.1, 0.2, 0.3, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6, 0.7]
    assert per_group_temperatures(0.8, blocks) == [0.8] * 10


@pytest.mark.parametrize("bad", [[1.0, 1.0], []])
def test_per_group_temperatures_need_one_per_top_level_block(bad):
    with pytest.raises(ValueError, match="down_strides"):
        per_group_temperatures(bad, [0, 0, 1])
