"""Issue 9 item 3: div_stats and encodings live under logs-<name>/latents/, as in the originals;
div_stats at the earlier location (logs-<name>/div_stats.npy) is still read, with a note."""
import numpy as np
import pytest

from efficient_vdvae_common.synthesis_files import div_stats_path, encodings_path, load_run_div_stats
from efficient_vdvae_common.variate_masks import DivStatsError, save_div_stats


def test_the_originals_locations(tmp_path):
    logs = tmp_path / "logs-run"
    assert div_stats_path(logs) == logs / "latents" / "div_stats.npy"
    assert encodings_path(logs) == logs / "latents" / "encodings.npz"


def test_div_stats_from_the_earlier_location_with_a_note(tmp_path, capsys):
    logs = tmp_path / "logs-run"
    earlier = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_div_stats(logs / "div_stats.npy", earlier)
    np.testing.assert_array_equal(load_run_div_stats(logs, 2, 3), earlier)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"note: reading div_stats from {logs / 'div_stats.npy'}" in out and str(div_stats_path(logs)) in out

    # Both present: the current location wins, silently.
    save_div_stats(div_stats_path(logs), earlier + 10)
    np.testing.assert_array_equal(load_run_div_stats(logs, 2, 3), earlier + 10)
    assert capsys.readouterr().out == ""


def test_missing_div_stats_names_the_current_location(tmp_path):
    logs = tmp_path / "logs-run"
    with pytest.raises(DivStatsError, match=f"no div_stats file at {div_stats_path(logs)}"):
        load_run_div_stats(logs, 2, 3)
