"""Variate masks from div_stats, and the div_stats file (efficient_vdvae_common.variate_masks)."""
import numpy as np
import pytest

from efficient_vdvae_common.variate_masks import DivStatsError, load_div_stats, save_div_stats, variate_masks


def test_masks_by_hand():
    # 20 values 0..19: the 0.9 quantile interpolates to 0.9 * 19 = 17.1, so 18 and 19 stay on.
    div_stats = np.arange(20, dtype=np.float64).reshape(4, 5)[::-1]
    expected = np.zeros((4, 5), dtype=bool)
    expected[0, 3:] = True  # the reversed first row is 15..19
    np.testing.assert_array_equal(variate_masks(div_stats, 0.1), expected)

    # 0..7 at quantile 0.25: threshold 0.75 * 7 = 5.25 -> 6 and 7.
    small = np.array([[7.0, 0.0, 5.0, 1.0], [2.0, 6.0, 3.0, 4.0]])
    np.testing.assert_array_equal(variate_masks(small, 0.25), [[True, False, False, False],
                                                              [False, True, False, False]])


def test_masks_keep_the_top_fraction():
    values = np.random.default_rng(0).permutation(1000).astype(np.float64) / 7.0
    div_stats = values.reshape(20, 50)
    masks = variate_masks(div_stats, 0.03)
    # 0.97 * 999 = 969.03 lies between the 970th and 971st smallest: the 30 largest stay on.
    assert masks.sum() == 30
    assert set(div_stats[masks]) == set(np.sort(values)[-30:])


def test_ties_at_the_threshold_stay_off():
    # Strictly greater: a constant div_stats (e.g. an untrained model) turns every variate off.
    assert not variate_masks(np.full((3, 4), 0.5), 0.03).any()
    # quantile 1 keeps every variate, the minimum and ties included (SPEC section 12; the strict '>' against
    # quantile(div_stats, 0) = min would drop the smallest); just below 1 the strict rule applies again.
    assert variate_masks(np.array([[0.0, 1.0, 2.0]]), 1.0).tolist() == [[True, True, True]]
    assert variate_masks(np.full((3, 4), 0.5), 1.0).all()
    assert variate_masks(np.array([[0.0, 1.0, 2.0]]), 0.999).tolist() == [[False, True, True]]


def test_masks_reject_bad_input():
    with pytest.raises(ValueError, match="groups, variates"):
        variate_masks(np.zeros(5), 0.1)
    with pytest.raises(ValueError, match="variate_masks_quantile"):
        variate_masks(np.zeros((2, 2)), 1.5)


def test_div_stats_file_round_trip(tmp_path):
    div_stats = np.random.default_rng(1).random((7, 3))
    path = tmp_path / "logs-run" / "div_stats.npy"
    save_div_stats(path, div_stats)
    assert [p.name for p in path.parent.iterdir()] == ["div_stats.npy"]  # no temp file left behind
    loaded = load_div_stats(path, 7, 3)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, div_stats, rtol=1e-6)


def test_div_stats_file_errors_name_the_file(tmp_path):
    path = tmp_path / "div_stats.npy"
    with pytest.raises(DivStatsError, match=f"no div_stats file at {path}.*synthesis_mode=div_stats"):
        load_div_stats(path, 7, 3)

    save_div_stats(path, np.zeros((7, 4)))
    with pytest.raises(DivStatsError, match=r"div_stats.npy has shape \(7, 4\), this model needs \(7, 3\)"):
        load_div_stats(path, 7, 3)

    save_div_stats(path, np.array([[np.nan, 1.0]]))
    with pytest.raises(DivStatsError, match="non-finite"):
        load_div_stats(path, 1, 2)

    # A pickled object array would run code on load: refused.
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DivStatsError, match=f"cannot read div_stats file {path}"):
        load_div_stats(path, 1, 1)
    path.write_bytes(b"not numpy")
    with pytest.raises(DivStatsError, match="cannot read"):
        load_div_stats(path, 1, 1)
