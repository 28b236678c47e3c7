"""Split protocol: official test halves, caps, div_stats subset, which splits flip."""
import numpy as np
import pytest

from efficient_vdvae_common.data import DataError, OfficialImages, build_split
from efficient_vdvae_common.data.splits import div_stats_indices, official_test_indices


def test_official_test_halves_follow_the_randomstate_101_permutation():
    # First entries of RandomState(101).permutation(10000), the original's order
    # (sklearn.utils.shuffle(x, random_state=101) draws the same permutation).
    val = official_test_indices(10000, "val", full_test_set=False)
    test = official_test_indices(10000, "synthesis", full_test_set=False)
    assert len(val) == len(test) == 5000
    assert sorted(np.concatenate([val, test]).tolist()) == list(range(10000))
    shuffled = np.arange(10000)
    np.random.RandomState(101).shuffle(shuffled)  # the in-place shuffle draws the same permutation
    np.testing.assert_array_equal(val, shuffled[:5000])
    np.testing.assert_array_equal(official_test_indices(10000, "synthesis", full_test_set=True), np.arange(10000))


def test_div_stats_subset_size_and_determinism():
    a = div_stats_indices(1000, 0.2, seed=420)
    assert len(a) == 200 and len(set(a.tolist())) == 200 and a.max() < 1000
    np.testing.assert_array_equal(a, div_stats_indices(1000, 0.2, seed=420))
    assert len(div_stats_indices(7, 0.5, seed=1)) == 4  # round(3.5) -> 4 (banker's: 4)
    with pytest.raises(DataError, match="div_stats_subset_ratio"):
        div_stats_indices(10, 0.0, seed=1)


def _official(train_count=20, test_count=12):
    rng = np.random.default_rng(5)
    return OfficialImages(rng.integers(0, 256, (train_count, 28, 28, 1), dtype=np.uint8),
                          rng.integers(0, 256, (test_count, 28, 28, 1), dtype=np.uint8))


def test_split_sizes_for_an_official_source(make_config):
    official = _official()
    hp = make_config("data.dataset_source=binarized_mnist", "data.channels=1", "val.n_samples_for_validation=4",
                     "synthesis.div_stats_subset_ratio=0.25")
    sizes = {s: len(build_split(hp, s, lambda name: official)) for s in ("train", "val", "synthesis", "div_stats", "encode")}
    assert sizes == {"train": 20, "val": 4, "synthesis": 6, "div_stats": 5, "encode": 20}
    full = make_config("data.dataset_source=binarized_mnist", "data.channels=1", "data.full_test_set=True")
    assert len(build_split(full, "synthesis", lambda name: official)) == 12


def test_mnist_binarization_is_fixed_for_eval_and_dynamic_for_train(make_config):
    official = _official()
    hp = make_config("data.dataset_source=binarized_mnist", "data.channels=1")
    val = build_split(hp, "val", lambda name: official)
    np.testing.assert_array_equal(val.load(0, epoch=0), val.load(0, epoch=5))
    train = build_split(hp, "train", lambda name: official)
    assert not np.array_equal(train.load(0, epoch=0), train.load(0, epoch=1))
    np.testing.assert_array_equal(train.load(0, epoch=1), train.load(0, epoch=1))


def test_flips_only_in_training(folder_config):
    hp, images = folder_config()
    train = build_split(hp, "train")
    plain = build_split(hp, "encode")
    flipped = [not np.array_equal(train.load(i, epoch=0), plain.load(i)) for i in range(len(train))]
    for i, was_flipped in enumerate(flipped):
        expected = plain.load(i)[:, ::-1] if was_flipped else plain.load(i)
        np.testing.assert_array_equal(train.load(i, epoch=0), expected)
    assert 0 < sum(flipped) < len(flipped)
    for split in ("val", "synthesis", "div_stats", "encode"):
        s = build_split(hp, split)
        assert not s.flip and all(np.array_equal(s.load(i, 0), s.load(i, 3)) for i in range(len(s)))
    no_flip = build_split(folder_config("data.random_horizontal_flip=False")[0], "train")
    assert all(np.array_equal(no_flip.load(i, 0), plain.load(i)) for i in range(len(no_flip)))


def test_unknown_split_and_wrong_shape_are_named(make_config):
    with pytest.raises(ValueError, match="split 'test'"):
        build_split(make_config(), "test")
    with pytest.raises(DataError, match="needs data.target_res=32 and data.channels=3"):
        build_split(make_config("data.target_res=64"), "val", lambda name: _official())
