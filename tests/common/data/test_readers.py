"""Each on-disk format written for real, then read back."""
import warnings

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.data import CorruptImageError, DataError, build_split
from efficient_vdvae_common.data.readers import ImageFolderReader, NpzReader


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reader_gives_hwc_images_memory_mapped(tmp_path, compressed, writers):
    images = writers.random_images(30, 8, seed=3)
    writers.write_imagenet_npz(tmp_path / "train", images, files=3, compressed=compressed)
    reader = NpzReader(tmp_path / "train", resolution=8, channels=3, what="data.train_data_path",
                       cache_dir=tmp_path / "cache")
    assert len(reader) == 30
    for i in (0, 9, 10, 29):  # across file boundaries
        np.testing.assert_array_equal(reader.read(i), images[i])
    assert all(isinstance(a, np.memmap) for a in reader._arrays)
    assert reader.name(10) == "train_data_batch_2_0000000"


def test_npz_of_the_wrong_resolution_names_file_and_keys(tmp_path, writers):
    writers.write_imagenet_npz(tmp_path, writers.random_images(4, 8), files=1)
    with pytest.raises(DataError, match=r"train_data_batch_1\.npz.*data\.target_res=16"):
        NpzReader(tmp_path, resolution=16, channels=3, what="data.train_data_path")


def test_nested_png_and_jpeg_folder_sorted_and_resized(tmp_path, writers):
    images = writers.random_images(12, 20, seed=4)
    names = writers.write_png_folder(tmp_path, images, nested=True, jpeg_every=3)
    reader = ImageFolderReader(tmp_path, resolution=8, channels=3, what="data.train_data_path")
    assert [reader.name(i) for i in range(len(reader))] == names
    assert reader.read(0).shape == (8, 8, 3) and reader.read(0).dtype == np.uint8
    # a PNG at its own resolution is read back exactly
    same_size = ImageFolderReader(tmp_path, resolution=20, channels=3, what="x")
    index = names.index("part1/img_001.png")
    np.testing.assert_array_equal(same_size.read(index), images[1])


def test_grayscale_folder_for_one_channel_and_rgb_conversion(tmp_path, writers):
    gray = writers.random_images(3, 8, channels=1)
    writers.write_png_folder(tmp_path, gray)
    one = ImageFolderReader(tmp_path, resolution=8, channels=1, what="x")
    np.testing.assert_array_equal(one.read(2), gray[2])
    three = ImageFolderReader(tmp_path, resolution=8, channels=3, what="x")
    np.testing.assert_array_equal(three.read(2), np.repeat(gray[2], 3, axis=-1))


def test_missing_or_empty_folder_names_the_setting(tmp_path):
    with pytest.raises(DataError, match="data.val_data_path.*does not exist"):
        ImageFolderReader(tmp_path / "nope", 8, 3, what="data.val_data_path")
    with pytest.raises(DataError, match="data.val_data_path: no image files"):
        ImageFolderReader(tmp_path, 8, 3, what="data.val_data_path")


def _with_corrupt_file(folder_config, tmp_path, *overrides):
    hp, _ = folder_config(*overrides)
    good = (tmp_path / "val" / "img_003.png").read_bytes()
    (tmp_path / "val" / "img_003.png").write_bytes(good[: len(good) // 3])  # truncated
    return hp


def test_corrupt_image_error_names_the_file(folder_config, tmp_path):
    split = build_split(_with_corrupt_file(folder_config, tmp_path), "val")
    with pytest.raises(CorruptImageError, match=r"img_003\.png"):
        split.load(3)


def test_corrupt_image_is_skipped_with_a_warning_when_allowed(folder_config, tmp_path):
    split = build_split(_with_corrupt_file(folder_config, tmp_path, "data.skip_corrupt_images=True"), "val")
    with pytest.warns(UserWarning, match=r"img_003\.png"):
        image = split.load(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(image, split.load(4))  # the next readable image stands in


def test_raw_celeba_photos_are_cropped_before_resizing(make_config, tmp_path):
    photo = np.zeros((218, 178, 3), dtype=np.uint8)
    photo[40:188, 15:163] = 200  # the crop box is bright, the rest black
    for name in ("train", "val", "synth"):
        (tmp_path / name).mkdir()
        Image.fromarray(photo).save(tmp_path / name / "000001.jpg", quality=100)
    hp = make_config("data.dataset_source=celebA", f"data.train_data_path='{tmp_path / 'train'}'",
                     f"data.val_data_path='{tmp_path / 'val'}'", f"data.synthesis_data_path='{tmp_path / 'synth'}'",
                     "data.target_res=16")
    pixels = build_split(hp, "val").reader.read(0)
    assert pixels.shape == (16, 16, 3)
    assert abs(int(pixels.min()) - 200) <= 3  # no black border left after the crop
