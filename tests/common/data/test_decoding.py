"""Issue 12 item 4: every Pillow pixel mode to 8-bit pixels (or a refusal naming the file), decompression bombs,
and one-line errors for broken files mid-run in both frameworks' loaders.

Expected pixels are computed here with numpy (or scikit-image) from the arrays the test wrote, not by Pillow's
conversions, except where Pillow's conversion is the documented rule (CMYK, luma).
"""
import warnings

import numpy as np
import pytest
from PIL import Image
from skimage.util import img_as_ubyte

from efficient_vdvae_common.data import CorruptImageError, build_split
from efficient_vdvae_common.data.decoding import open_8bit, to_8bit
from efficient_vdvae_common.data.readers import ImageFolderReader


def _rng(seed=0):
    return np.random.default_rng(seed)




def test_16bit_grayscale_png_keeps_its_contrast(tmp_path):
    values = _rng().integers(0, 65536, size=(12, 10), dtype=np.uint16)
    values[0, :4] = (0, 257, 65535, 32768)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I")  # really stored and read back as 16-bit
    pixels = np.asarray(open_8bit(tmp_path / "g16.png"))
    np.testing.assert_array_equal(pixels, img_as_ubyte(values))  # scikit-image's 16 -> 8 bit rule
    np.testing.assert_array_equal(pixels[0, :4], (0, 1, 255, 128))
    rgb = np.asarray(open_8bit(tmp_path / "g16.png", "RGB"))
    np.testing.assert_array_equal(rgb, np.repeat(pixels[..., None], 3, axis=2))


def test_16bit_grayscale_tiff_big_endian(tmp_path):
    values = _rng(1).integers(0, 65536, size=(6, 7), dtype=np.uint16)
    Image.frombytes("I;16B", (7, 6), values.astype(">u2").tobytes()).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(np.asarray(open_8bit(tmp_path / "g16.tif")), values >> 8)


def test_mode_i_from_a_png_is_16_bit():
    values = _rng(2).integers(0, 65536, size=(5, 5)).astype(np.int32)
    image = Image.fromarray(values, mode="I")
    np.testing.assert_array_equal(np.asarray(to_8bit(image, "x.png", "PNG")), values >> 8)


@pytest.mark.parametrize("mode,dtype", [("F", np.float32), ("I", np.int32)])
def test_float_and_32bit_integer_images_are_refused_naming_the_file(tmp_path, mode, dtype):
    Image.fromarray(np.full((4, 4), 0.5 if mode == "F" else 70000, dtype=dtype), mode=mode).save(tmp_path / "odd.tif")
    with pytest.raises(CorruptImageError, match=rf"odd\.tif: pixel mode {mode} ") as error:
        open_8bit(tmp_path / "odd.tif")
    assert "\n" not in str(error.value)


def test_rgba_drops_alpha_as_the_originals_do(tmp_path):
    rgba = _rng(3).integers(0, 256, size=(9, 8, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 0)  # a fully transparent pixel keeps its stored colour
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    expected = rgba[..., :3]
    np.testing.assert_array_equal(np.asarray(open_8bit(tmp_path / "a.png")), expected)
    luma = np.asarray(open_8bit(tmp_path / "a.png", "L")).astype(int)
    itu_601 = expected.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma - itu_601).max() <= 1


def test_gray_with_alpha_drops_alpha(tmp_path):
    la = _rng(4).integers(0, 256, size=(7, 6, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    image = open_8bit(tmp_path / "la.png")
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), la[..., 0])


def test_palette_with_and_without_transparency(tmp_path):
    palette = _rng(5).integers(0, 256, size=(256, 3), dtype=np.uint8)
    indices = _rng(6).integers(0, 256, size=(8, 8), dtype=np.uint8)
    indices[0, 0] = 7
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(open_8bit(tmp_path / "p.png")), palette[indices])
    image.save(tmp_path / "pt.png", transparency=7)  # colour 7 transparent: its palette colour stays
    expected = palette[indices]
    np.testing.assert_array_equal(np.asarray(open_8bit(tmp_path / "pt.png")), expected)


def test_cmyk_uses_the_subtractive_rule(tmp_path):
    cmyk = _rng(7).integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    colour = cmyk[..., :3].astype(np.float64)
    black = cmyk[..., 3:].astype(np.float64)
    expected = (255 - colour) * (255 - black) / 255
    assert np.abs(np.asarray(open_8bit(tmp_path / "c.tif")).astype(float) - expected).max() <= 0.5 + 1e-9


def test_one_bit_images_are_black_and_white(tmp_path):
    bits = _rng(8).integers(0, 2, size=(6, 9)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    image = open_8bit(tmp_path / "b.png")
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), bits.astype(np.uint8) * 255)


def test_the_folder_reader_uses_these_rules(tmp_path):
    values = _rng(9).integers(0, 65536, size=(8, 8), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    pixels = ImageFolderReader(tmp_path, 8, 1, what="data.val_data_path").read(0)
    np.testing.assert_array_equal(pixels[..., 0], values >> 8)


@pytest.mark.parametrize("side", [12, 20])  # over the limit of 100 pixels (Pillow warns) and over twice it (raises)
def test_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch, side):
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning without a file name either
        with pytest.raises(CorruptImageError, match=r"bomb\.png: .*decompression-bomb limit of 100") as error:
            open_8bit(tmp_path / "bomb.png")
    assert "\n" not in str(error.value)


def test_decompression_bomb_is_skipped_with_skip_corrupt_images(folder_config, tmp_path, monkeypatch):
    hp, images = folder_config("data.skip_corrupt_images=True")
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "val" / "img_002.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16 * 16 * 2)  # the 16x16 images pass, the 40x40 one does not
    split = build_split(hp, "val")
    with pytest.warns(UserWarning, match=r"img_002\.png"):
        stand_in = split.load(2)
    np.testing.assert_allclose(stand_in, (images[27].astype(np.float32) - 127.5) / 127.5, atol=1e-6)  # next image


def _break(tmp_path, how):
    path = tmp_path / "val" / "img_005.png"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(b"this is not an image at all")


@pytest.mark.parametrize("how", ["truncated", "not_an_image"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_broken_file_mid_run_is_one_line_naming_the_file(folder_config, tmp_path, framework, how):
    """The PyTorch DataLoader used to re-raise a worker's error as a multi-line traceback."""
    hp, _ = folder_config()
    _break(tmp_path, how)
    if framework == "torch":
        from efficient_vdvae_torch.data import create_dataloader

        batches = create_dataloader(hp, "val", num_workers=2)
    else:
        from efficient_vdvae_jax.data import create_iterator

        batches = create_iterator(hp, "val", num_devices=1)
    with pytest.raises(CorruptImageError) as error:
        for _ in batches:
            pass
    message = str(error.value)
    assert "\n" not in message and "img_005.png" in message and "Traceback" not in message
    assert message.startswith("cannot read image file ")


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_truncated_train_image_stops_train_py_with_one_line(tmp_path, framework):
    """End to end: the image breaks after the run started (setup only lists files); stderr is one line."""
    import os
    import subprocess
    import sys

    from tests.conftest import REFERENCE_CONFIG, REPO_ROOT
    from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

    write_random_pngs(tmp_path / "train", numbered_pngs(8), seed=1)
    write_random_pngs(tmp_path / "val", numbered_pngs(4), seed=2)
    broken = tmp_path / "train" / "img_006.png"
    broken.write_bytes(broken.read_bytes()[:50])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / framework / "train.py"), "--config", str(REFERENCE_CONFIG), "--set",
         "data.target_res=16", *TWO_LEVEL_MODEL, "run.name=broken", "run.num_gpus=1", "run.num_cpus=1",
         "data.dataset_source=custom", f"data.train_data_path='{tmp_path / 'train'}'",
         f"data.val_data_path='{tmp_path / 'val'}'", f"data.synthesis_data_path='{tmp_path / 'val'}'",
         "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=4", "train.total_train_steps=4",
         "data.random_horizontal_flip=False"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines[-1].startswith("error: cannot read image file ") and "img_006.png" in lines[-1], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
