"""Issue 9 item 6: with val.n_samples_for_validation below the split size, validation uses the first N
images of a seeded shuffle (as the originals), the same subset at every evaluation, on every rank and in
both frameworks' loaders; not the first N files of a sorted folder."""
from __future__ import annotations

import numpy as np
import pytest

from efficient_vdvae_common.data.splits import VALIDATION_SUBSET_STREAM
from tests.helpers import numbered_pngs, write_random_pngs

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

NUM_VAL, SUBSET = 20, 6


@pytest.fixture
def subset_config(make_config, tmp_path):
    write_random_pngs(tmp_path / "val", numbered_pngs(NUM_VAL), seed=3)

    def _make(*extra: str):
        return make_config("data.dataset_source=custom", "data.target_res=16", f"data.train_data_path='{tmp_path}/val'",
                           f"data.val_data_path='{tmp_path}/val'", f"data.synthesis_data_path='{tmp_path}/val'",
                           "val.batch_size=4", f"val.n_samples_for_validation={SUBSET}", *extra)
    return _make


def _torch_names(hp, world_size: int) -> list[str]:
    """Names of one validation pass, global batch by global batch (rank 0's rows, then rank 1's, ...)."""
    from efficient_vdvae_torch.data import create_dataloader

    loaders = [create_dataloader(hp, "val", rank=r, world_size=world_size, num_workers=0, with_names=True)
               for r in range(world_size)]
    names = []
    for batches in zip(*loaders):
        names += [name for _, batch_names in batches for name in batch_names]
    return names


def _jax_names(hp, num_devices: int) -> list[str]:
    from efficient_vdvae_jax.data import create_iterator

    names = []
    for _, batch_names, mask in create_iterator(hp, "val", num_devices=num_devices, with_names=True, with_mask=True):
        names += [name for device_names in batch_names for name in device_names]
    return names


def _expected(seed: int) -> list[str]:
    """A seeded permutation of the sorted folder, cut after N (numpy's documented Generator.permutation)."""
    order = np.random.default_rng([seed, VALIDATION_SUBSET_STREAM]).permutation(NUM_VAL)
    return [f"img_{i:03d}.png" for i in order[:SUBSET]]


def test_validation_subset_is_a_seeded_permutation_prefix(subset_config):
    hp = subset_config()
    expected = _expected(hp.run.seed)
    assert expected != [f"img_{i:03d}.png" for i in range(SUBSET)]  # not file order
    assert sorted(expected) != [f"img_{i:03d}.png" for i in range(SUBSET)]  # not the first N files at all
    # Every loader, every rank count, every evaluation: the same images in the same order.
    for world_size in (1, 2):
        assert _torch_names(hp, world_size) == expected
        assert _jax_names(hp, world_size) == expected
    assert _torch_names(hp, 1) == expected  # a later evaluation

    other = subset_config("run.seed=421")
    assert _torch_names(other, 1) == _jax_names(other, 1) == _expected(421) != expected


def test_validation_subset_is_the_whole_split_in_order_when_large_enough(subset_config):
    hp = subset_config(f"val.n_samples_for_validation={NUM_VAL}")
    everything = [f"img_{i:03d}.png" for i in range(NUM_VAL)]
    assert _torch_names(hp, 1) == _jax_names(hp, 1) == everything
