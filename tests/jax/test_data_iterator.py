"""The JAX host iterator: device-shaped batches, parity with the torch loader, tfds path."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
from tensorflow_datasets.core import shuffle as tfds_shuffle

from efficient_vdvae_common.data import CorruptImageError
from efficient_vdvae_jax.data import create_iterator
from efficient_vdvae_torch.data import create_dataloader


def _torch_nhwc(loader):
    return torch.cat(list(loader)).permute(0, 2, 3, 1).numpy()


def _jax_flat(iterator):
    return np.concatenate([x.reshape((-1,) + x.shape[2:]) for x in iterator])


def test_batches_are_shaped_for_the_devices(folder_config):
    hp, _ = folder_config()
    iterator = create_iterator(hp, "train", num_devices=2)
    assert len(iterator) == 6
    batches = list(iterator)
    assert len(batches) == 6 and all(b.shape == (2, 2, 16, 16, 3) and b.dtype == np.float32 for b in batches)
    x, names = next(create_iterator(hp, "val", num_devices=1, with_names=True))
    assert x.shape == (1, 4, 16, 16, 3) and names == [["img_000.png", "img_001.png", "img_002.png", "img_003.png"]]


@pytest.mark.parametrize("split", ["val", "synthesis", "div_stats", "train"])
def test_same_batches_as_torch_for_image_folders(folder_config, split):
    hp, _ = folder_config("data.num_bits=5", "run.num_gpus=2")
    torch_ranks = [_torch_nhwc(create_dataloader(hp, split, rank=r, world_size=2, num_workers=0)) for r in range(2)]
    jax_batches = list(create_iterator(hp, split, num_devices=2, epoch=0, with_mask=True))
    per_device = [np.concatenate([x[d][mask[d]] for x, mask in jax_batches]) for d in range(2)]
    for d in range(2):
        np.testing.assert_array_equal(per_device[d], torch_ranks[d])


def test_same_batches_as_torch_for_imagenet_npz(make_config, tmp_path, writers):
    images = writers.random_images(20, 16, seed=11)
    writers.write_imagenet_npz(tmp_path / "train", images[:14], files=2)
    writers.write_imagenet_npz(tmp_path / "val", images[14:], files=1)
    hp = make_config("data.dataset_source=imagenet", "data.target_res=16",
                     f"data.train_data_path='{tmp_path / 'train'}'", f"data.val_data_path='{tmp_path / 'val'}'",
                     f"data.synthesis_data_path='{tmp_path / 'val'}'")
    val = _jax_flat(create_iterator(hp, "val", num_devices=1))
    np.testing.assert_array_equal(val, _torch_nhwc(create_dataloader(hp, "val", num_workers=0)))
    np.testing.assert_allclose(val, (images[14:].astype(np.float32) - 127.5) / 127.5, atol=1e-6)
    train_jax = _jax_flat(create_iterator(hp, "train", num_devices=1, epoch=3, start_batch=1))
    loader = create_dataloader(hp, "train", num_workers=0)
    loader.sampler.set_epoch(3)
    loader.sampler.set_start_batch(1)
    np.testing.assert_array_equal(train_jax, _torch_nhwc(loader))


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_process_reads_only_its_devices_slices(folder_config, split):
    """A process of a multi-process run (devices=) gets exactly its slices of the one-process batches."""
    hp, _ = folder_config("train.batch_size=6", "val.batch_size=6")
    everything = list(create_iterator(hp, split, num_devices=3, epoch=1, with_mask=True))
    for devices in (range(0, 1), range(1, 3)):
        mine = list(create_iterator(hp, split, num_devices=3, epoch=1, with_mask=True, devices=devices))
        assert len(mine) == len(everything) > 0
        for (x, mask), (all_x, all_mask) in zip(mine, everything):
            part = slice(devices.start, devices.stop)
            assert x.shape[0] == len(devices) and mask.sum(axis=1).tolist() == all_mask[part].sum(axis=1).tolist()
            np.testing.assert_array_equal(x[mask], all_x[part][all_mask[part]])
    with pytest.raises(ValueError, match="devices"):
        create_iterator(hp, split, num_devices=3, devices=range(2, 4))


def test_uneven_last_batch_is_padded_with_a_mask(folder_config):
    hp, _ = folder_config("val.batch_size=6")  # 10 images: batches of 6 and 4 over 3 devices
    with pytest.raises(ValueError, match="with_mask=True"):
        create_iterator(hp, "val", num_devices=3)
    batches = list(create_iterator(hp, "val", num_devices=3, with_mask=True))
    (x0, m0), (x1, m1) = batches
    assert x0.shape == (3, 2, 16, 16, 3) and m0.all()
    assert m1.tolist() == [[True, True], [True, False], [True, False]]
    assert not x1[~m1].any()  # padding is zeros
    assert m0.sum() + m1.sum() == 10


def test_errors_reach_the_consumer_and_early_exit_is_clean(folder_config, tmp_path):
    hp, _ = folder_config("val.batch_size=2")
    iterator = create_iterator(hp, "val", num_devices=1, prefetch=1)
    next(iterator)
    iterator.close()  # stops the producer thread instead of leaving it blocked
    iterator._thread.join(timeout=5)
    assert not iterator._thread.is_alive()
    with pytest.raises(StopIteration):
        next(iterator)
    abandoned = create_iterator(hp, "val", num_devices=1, prefetch=1)
    thread = abandoned._thread
    del abandoned  # never closed: collecting it stops its thread
    thread.join(timeout=5)
    assert not thread.is_alive()
    (tmp_path / "val" / "img_007.png").write_bytes(b"broken")
    with pytest.raises(CorruptImageError, match=r"img_007\.png"):
        list(create_iterator(hp, "val", num_devices=1))


def _stored_order(keys, salt, tmp_path):
    """The order in which tfds's own writer stores examples with these keys."""
    shuffler = tfds_shuffle.Shuffler(tmp_path, hash_salt=salt)
    for key in keys:
        shuffler.add(key, str(key).encode())
    return [int(data) for _, data in shuffler]


def _tfds_records(images, split, tmp_path, with_ids):
    stored = _stored_order(range(len(images)), split, tmp_path)
    records = []
    for key in stored:
        record = {"image": images[key], "label": 0}
        if with_ids:
            record["id"] = f"{split}_{key:05d}".encode()
        records.append(record)
    return records


@pytest.mark.parametrize("source,name,channels", [("binarized_mnist", "mnist", 1), ("cifar-10", "cifar10", 3)])
def test_tfds_path_restores_the_official_order(make_config, tmp_path, monkeypatch, writers, source, name, channels):
    size = 28 if name == "mnist" else 32
    train, test = writers.random_images(12, size, channels, seed=12), writers.random_images(10, size, channels, seed=13)
    data = {"train": _tfds_records(train, "train", tmp_path, name == "cifar10"),
            "test": _tfds_records(test, "test", tmp_path, name == "cifar10")}
    assert [np.array_equal(r["image"], t) for r, t in zip(data["test"], test)].count(False) > 0  # stored != official

    def as_data_source(builder, split=None, **kwargs):
        assert builder.name == name
        return data[split]

    hp = make_config(f"data.dataset_source='{source}'", f"data.channels={channels}")
    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        val = _jax_flat(create_iterator(hp, "val", num_devices=1, data_dir=tmp_path))
        encode = _jax_flat(create_iterator(hp, "encode", num_devices=1, data_dir=tmp_path))

    # The same images through torchvision's on-disk layout give the same batches.
    if name == "mnist":
        writers.write_mnist_idx(tmp_path / "mnist", train, test)
    else:
        writers.write_cifar10_python(tmp_path / "cifar-10", train, test, monkeypatch)
    torch_val = _torch_nhwc(create_dataloader(hp, "val", num_workers=0, data_dir=tmp_path, download=False))
    np.testing.assert_array_equal(val, torch_val)
    order = np.random.RandomState(101).permutation(10)[:5]
    if name == "mnist":
        assert val.shape == (5, 32, 32, 1) and set(np.unique(val)) <= {0.0, 1.0}
        # binarized with p = intensity: agreement with (p > 0.5) is 0.75 on average, 0.5 for unrelated images
        agreement = (val[:, 2:30, 2:30, 0] == (test[order, :, :, 0] > 127.5)).mean()
        assert agreement > 0.7
        assert encode.shape == (12, 32, 32, 1)
    else:
        np.testing.assert_allclose(val, (test[order] - 127.5) / 127.5, atol=1e-6)
        np.testing.assert_allclose(encode, (train - 127.5) / 127.5, atol=1e-6)
