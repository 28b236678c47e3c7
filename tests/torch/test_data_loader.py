"""The PyTorch DataLoader over every format: shapes, ranges, shards, resume, errors."""
import numpy as np
import pytest
import torch

from efficient_vdvae_common.data import CorruptImageError, DataError
from efficient_vdvae_torch.data import create_dataloader


def _all(loader):
    return torch.cat(list(loader)).numpy()


def test_folder_batches_shapes_range_and_5_bits(folder_config):
    hp, images = folder_config("data.num_bits=5")
    loader = create_dataloader(hp, "val", num_workers=0)
    batches = list(loader)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)]  # nothing dropped
    x = torch.cat(batches).numpy()
    assert x.dtype == np.float32
    expected = ((images[24:34] // 8 * 8).astype(np.float32) - 127.5) / 127.5  # independent of the loader's code
    np.testing.assert_allclose(x, expected.transpose(0, 3, 1, 2), atol=1e-6)
    assert x.max() <= 120.5 / 127.5 + 1e-7 and x.min() >= -1


def test_train_batches_are_seeded_drop_the_remainder_and_flip(folder_config):
    hp, images = folder_config("train.batch_size=5")
    loader = create_dataloader(hp, "train", num_workers=0)
    assert len(loader) == 4  # 24 images, batch 5: the incomplete 5th batch is dropped
    first = _all(loader)
    np.testing.assert_array_equal(first, _all(create_dataloader(hp, "train", num_workers=0)))
    loader.sampler.set_epoch(1)
    assert not np.array_equal(first, _all(loader))
    originals = (images[:24].astype(np.float32) - 127.5) / 127.5
    unflipped = [any(np.array_equal(x, o.transpose(2, 0, 1)) for o in originals) for x in first]
    assert 0 < sum(unflipped) < len(first)  # some images mirrored, some not


def test_two_ranks_are_disjoint_complete_and_resumable(folder_config):
    hp, _ = folder_config("train.batch_size=4", "run.num_gpus=2")
    loaders = [create_dataloader(hp, "train", rank=r, world_size=2, num_workers=0, with_names=True) for r in range(2)]
    names = [[n for _, batch_names in loader for n in batch_names] for loader in loaders]
    assert all(len(loader.dataset) == 24 for loader in loaders)
    assert [len(n) for n in names] == [12, 12] and not set(names[0]) & set(names[1])
    assert len(set(names[0]) | set(names[1])) == 24
    assert next(iter(loaders[0]))[0].shape == (2, 3, 16, 16)  # global batch 4 over 2 ranks

    loaders[1].sampler.set_start_batch(4)
    assert [n for _, b in loaders[1] for n in b] == names[1][8:]
    assert [n for _, b in loaders[1] for n in b] == names[1]  # the skip applied to one pass only

    val = [create_dataloader(hp, "val", rank=r, world_size=2, num_workers=0, with_names=True) for r in range(2)]
    val_names = [[n for _, b in loader for n in b] for loader in val]
    assert sorted(val_names[0] + val_names[1]) == [f"img_{i:03d}.png" for i in range(10)]


def test_div_stats_and_encode_splits(folder_config):
    hp, _ = folder_config("synthesis.div_stats_subset_ratio=0.25")
    assert len(_all(create_dataloader(hp, "div_stats", num_workers=0))) == 6
    x, names = next(iter(create_dataloader(hp, "encode", num_workers=0, with_names=True)))
    assert list(names) == ["img_000.png", "img_001.png", "img_002.png", "img_003.png"]


def test_cifar10_from_a_local_torchvision_folder(make_config, tmp_path, monkeypatch, writers):
    train, test = writers.random_images(30, 32, seed=7), writers.random_images(12, 32, seed=8)
    writers.write_cifar10_python(tmp_path / "cifar-10", train, test, monkeypatch)
    hp = make_config("data.dataset_source='cifar-10'")
    val = _all(create_dataloader(hp, "val", num_workers=0, data_dir=tmp_path, download=False))
    order = np.random.RandomState(101).permutation(12)
    np.testing.assert_allclose(val, ((test[order[:6]] - 127.5) / 127.5).transpose(0, 3, 1, 2), atol=1e-6)
    synthesis = _all(create_dataloader(hp, "synthesis", num_workers=0, data_dir=tmp_path, download=False))
    np.testing.assert_allclose(synthesis, ((test[order[6:]] - 127.5) / 127.5).transpose(0, 3, 1, 2), atol=1e-6)
    assert len(create_dataloader(hp, "train", num_workers=0, data_dir=tmp_path, download=False)) == 7


def test_mnist_idx_files_padded_and_binarized(make_config, tmp_path, writers):
    train, test = writers.random_images(16, 28, 1, seed=9), writers.random_images(10, 28, 1, seed=10)
    writers.write_mnist_idx(tmp_path / "mnist", train, test)
    hp = make_config("data.dataset_source=binarized_mnist", "data.channels=1")
    loader = create_dataloader(hp, "train", num_workers=0, data_dir=tmp_path, download=False)
    x = _all(loader)
    assert x.shape == (16, 1, 32, 32) and set(np.unique(x)) == {0.0, 1.0}
    assert x[:, :, :2].sum() == x[:, :, 30:].sum() == x[:, :, :, :2].sum() == x[:, :, :, 30:].sum() == 0
    loader.sampler.set_epoch(1)
    assert not np.array_equal(np.sort(x.reshape(16, -1).sum(1)), np.sort(_all(loader).reshape(16, -1).sum(1)))
    val = create_dataloader(hp, "val", num_workers=0, data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(_all(val), _all(val))  # binarized once


def test_missing_official_data_without_download_is_a_clear_error(make_config, tmp_path):
    with pytest.raises(DataError, match="cifar10 is not in .*downloading is disabled"):
        create_dataloader(make_config(), "val", data_dir=tmp_path, download=False)


def test_corrupt_file_in_a_worker_names_the_file(folder_config, tmp_path):
    hp, _ = folder_config()
    (tmp_path / "val" / "img_005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CorruptImageError, match=r"img_005\.png"):
        _all(create_dataloader(hp, "val", num_workers=1))
