"""Epoch orders, per-rank shards and resume positions."""
import numpy as np
import pytest

from efficient_vdvae_common.data import epoch_order, rank_positions


def test_epoch_order_is_seeded_and_changes_with_epoch():
    a = epoch_order(100, seed=420, epoch=0, shuffle=True)
    assert sorted(a.tolist()) == list(range(100))
    np.testing.assert_array_equal(a, epoch_order(100, seed=420, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(100, seed=420, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(100, seed=421, epoch=0, shuffle=True))
    np.testing.assert_array_equal(epoch_order(5, seed=1, epoch=3, shuffle=False), np.arange(5))


@pytest.mark.parametrize("drop_last,expected_total", [(True, 24), (False, 27)])
def test_two_ranks_are_disjoint_and_complete(drop_last, expected_total):
    ranks = [rank_positions(27, 8, r, 2, drop_last=drop_last) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # same number of batches on every rank
    flat = [np.concatenate(batches) for batches in ranks]
    assert not set(flat[0]) & set(flat[1])
    assert sorted(np.concatenate(flat).tolist()) == list(range(expected_total))
    # each global batch is the union of the ranks' batches of the same step
    for b in range(len(ranks[0])):
        together = sorted(np.concatenate([ranks[0][b], ranks[1][b]]).tolist())
        assert together == list(range(b * 8, min((b + 1) * 8, 27 if not drop_last else 24)))


def test_start_batch_resumes_the_same_pass():
    full = rank_positions(40, 4, 1, 2, drop_last=True)
    resumed = rank_positions(40, 4, 1, 2, drop_last=True, start_batch=3)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in full[3:]]


def test_bad_batch_or_rank_is_named():
    with pytest.raises(ValueError, match="multiple"):
        rank_positions(10, 3, 0, 2, drop_last=True)
    with pytest.raises(ValueError, match="rank 2"):
        rank_positions(10, 4, 2, 2, drop_last=True)
