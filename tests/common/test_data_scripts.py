"""The data scripts: sample dataset, seeded split, CelebA crop, offline resize, --help."""
import importlib.util
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[2] / "data_scripts"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"data_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["make_sample_dataset", "random_split", "preprocess_celeba64", "resize_images"])
def test_every_python_script_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script(name).main(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


def test_download_script_help_and_unknown_dataset():
    result = subprocess.run(["bash", str(SCRIPTS / "download_and_preprocess.sh"), "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "imagenet32|imagenet64|celeba|celebahq|ffhq" in result.stdout
    result = subprocess.run(["bash", str(SCRIPTS / "download_and_preprocess.sh"), "mnist"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown dataset 'mnist'" in result.stderr


# /bin/sh is dash on Debian/Ubuntu; dash and bash are tried too where installed.
SHELLS = ["sh"] + [name for name in ("dash", "bash") if shutil.which(name)]


def _run_download_script(shell, tmp_path, *args):
    env = dict(os.environ, DATASET_DUMPS=str(tmp_path / "dumps"), DATASETS=str(tmp_path / "datasets"))
    return subprocess.run([shell, str(SCRIPTS / "download_and_preprocess.sh"), *args],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("shell", SHELLS)
def test_item8_download_script_under_sh_lists_the_valid_names(shell, tmp_path):
    """Issue 9 item 8: `sh download_and_preprocess.sh <name>` (dash) re-runs itself under bash."""
    result = _run_download_script(shell, tmp_path, "mnist")
    assert result.returncode == 2, result.stderr
    assert "unknown dataset 'mnist'" in result.stderr and "pipefail" not in result.stderr
    assert "imagenet32|imagenet64|celeba|celebahq|ffhq" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_item8_download_script_under_sh_names_the_manual_celeba_files(shell, tmp_path):
    result = _run_download_script(shell, tmp_path, "celeba")
    assert result.returncode == 2, result.stderr
    assert "img_align_celeba.zip" in result.stderr and "list_eval_partition.txt" in result.stderr
    assert str(tmp_path / "dumps") in result.stderr and "drive.google.com" in result.stderr
    (tmp_path / "dumps" / "img_align_celeba.zip").write_bytes(b"")  # one there: only the other is named
    result = _run_download_script(shell, tmp_path, "celeba")
    assert result.returncode == 2 and "list_eval_partition.txt not found" in result.stderr
    assert "img_align_celeba.zip not found" not in result.stderr


@pytest.mark.parametrize("kind", ["shapes", "photos"])
def test_sample_dataset_layout_and_determinism(tmp_path, make_config, kind):
    script = _script("make_sample_dataset")
    for out in ("a", "b"):
        script.main(["--kind", kind, "--out", str(tmp_path / out), "--n-train", "20", "--n-val", "6",
                     "--n-synthesis", "3", "--size", "32"])
    counts = {d: len(list((tmp_path / "a" / d).glob("*.png"))) for d in ("train_data", "val_data", "synthesis_data")}
    assert counts == {"train_data": 20, "val_data": 6, "synthesis_data": 3}
    for f in (tmp_path / "a" / "train_data").glob("*.png"):
        image = np.asarray(Image.open(f))
        assert image.shape == (32, 32, 3)
        np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / "b" / "train_data" / f.name)))
    # the quick start reads it as a custom folder dataset
    from efficient_vdvae_torch.data import create_dataloader

    hp = make_config("data.dataset_source=custom", f"data.train_data_path='{tmp_path / 'a' / 'train_data'}'",
                     f"data.val_data_path='{tmp_path / 'a' / 'val_data'}'",
                     f"data.synthesis_data_path='{tmp_path / 'a' / 'synthesis_data'}'")
    batch = next(iter(create_dataloader(hp, "train", num_workers=0)))
    assert batch.shape == (4, 3, 32, 32) and batch.std() > 0.05


def test_shapes_are_one_coloured_shape_near_the_centre_of_the_plain_background():
    script = _script("make_sample_dataset")
    rng = np.random.default_rng(0)
    size = 32
    for _ in range(30):
        image = np.asarray(script.draw_shape(size, rng))
        background = (image == script.BACKGROUND).all(axis=-1)
        assert 0.1 < 1 - background.mean() < 0.7  # the shape covers a tenth to most of the picture
        colours, counts = np.unique(image[~background], axis=0, return_counts=True)
        assert tuple(colours[counts.argmax()]) in script.SHAPE_COLOURS.values()  # edges blend, the inside is pure
        # Its bounding box (blended edges included: one pixel of slack) is of the drawn size, near the centre.
        rows, cols = np.nonzero(~background)
        for low, high in ((rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1)):
            assert script.SIDE_RANGE[0] * size - 1 <= high - low <= script.SIDE_RANGE[1] * size + 2
            assert abs((low + high) / 2 - size / 2) <= script.MAX_OFFSET * size + 1


def test_random_split_is_seeded_complete_and_flat(tmp_path, writers):
    for name in ("x", "y"):
        source = tmp_path / f"in_{name}"
        for i, image in enumerate(writers.random_images(12, 4)):
            (source / f"{i // 5:05d}").mkdir(parents=True, exist_ok=True)  # nested like FFHQ
            Image.fromarray(image).save(source / f"{i // 5:05d}" / f"{i:05d}.png")
        _script("random_split").main([str(source), str(tmp_path / f"out_{name}"), "4", "--seed", "3"])
    val = sorted(p.name for p in (tmp_path / "out_x" / "val_data").iterdir())
    train = sorted(p.name for p in (tmp_path / "out_x" / "train_data").iterdir())
    assert len(val) == 4 and len(train) == 8 and sorted(val + train) == [f"{i:05d}.png" for i in range(12)]
    assert val == sorted(p.name for p in (tmp_path / "out_y" / "val_data").iterdir())
    assert (tmp_path / "out_x" / "val_files.txt").read_text().split() == val
    assert not list((tmp_path / "in_x").rglob("*.png"))  # moved, not copied


def _celeba_photos(tmp_path, seed=0):
    """Four aligned-CelebA-sized JPEGs and their partition file (2 train, 1 val, 1 test)."""
    photos = tmp_path / "img_align_celeba"
    photos.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(1, 5):
        photo = np.zeros((218, 178, 3), dtype=np.uint8)
        photo[40:188, 15:163] = 90 + rng.integers(-20, 21, size=(148, 148, 3))  # textured: JPEG must lose something
        Image.fromarray(photo).save(photos / f"{i:06d}.jpg", quality=100)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n")
    return photos, tmp_path / "list_eval_partition.txt"


def test_celeba_preprocessing_crops_and_partitions(tmp_path):
    photos, partition = _celeba_photos(tmp_path)
    _script("preprocess_celeba64").main([str(photos), str(partition), str(tmp_path / "celebA"), "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "celebA" / "train_data").iterdir()) == ["000001.jpg", "000002.jpg"]
    assert [p.name for p in (tmp_path / "celebA" / "synthesis_data").iterdir()] == ["000004.jpg"]
    cropped = np.asarray(Image.open(tmp_path / "celebA" / "val_data" / "000003.jpg"))
    assert cropped.shape == (148, 148, 3) and abs(float(cropped.mean()) - 90) <= 2


def test_item7_celeba_crops_are_jpeg_quality_75_420_by_default(tmp_path):
    """Issue 9 item 7: the original's protocol (JPEG q75, 4:2:0), on which the published 1.83 bits/dim was measured."""
    from PIL import JpegImagePlugin

    photos, partition = _celeba_photos(tmp_path)
    _script("preprocess_celeba64").main([str(photos), str(partition), str(tmp_path / "celebA"), "--workers", "1"])
    with Image.open(photos / "000003.jpg") as photo:
        crop = photo.convert("RGB").crop((15, 40, 163, 188))
    reference = io.BytesIO()  # what Pillow writes for quality 75 (its libjpeg tables scaled for q75)
    crop.save(reference, format="JPEG", quality=75)
    with Image.open(reference) as expected, Image.open(tmp_path / "celebA" / "val_data" / "000003.jpg") as written:
        assert written.format == "JPEG"
        assert JpegImagePlugin.get_sampling(written) == 2  # Pillow's code for 4:2:0
        assert written.quantization == expected.quantization
        assert written.quantization != Image.open(_jpeg_bytes(crop, 95)).quantization  # the check can fail
        pixels = np.asarray(written, dtype=np.int16)
    lossless = np.asarray(crop, dtype=np.int16)
    assert 0 < np.abs(pixels - lossless).mean() < 10  # lossy, but the same picture


def _jpeg_bytes(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer


def test_item7_celeba_lossless_png_flag_keeps_the_decoded_pixels(tmp_path):
    photos, partition = _celeba_photos(tmp_path)
    _script("preprocess_celeba64").main([str(photos), str(partition), str(tmp_path / "celebA"), "--workers", "1",
                                         "--lossless-png"])
    for name, folder in (("000001", "train_data"), ("000003", "val_data"), ("000004", "synthesis_data")):
        with Image.open(tmp_path / "celebA" / folder / f"{name}.png") as written:
            assert written.format == "PNG"
            pixels = np.asarray(written)
        expected = np.asarray(Image.open(photos / f"{name}.jpg").convert("RGB"))[40:188, 15:163]
        np.testing.assert_array_equal(pixels, expected)
    assert not list((tmp_path / "celebA").rglob("*.jpg"))


def test_item7_celeba_refuses_to_mix_formats_in_one_folder(tmp_path, capsys):
    photos, partition = _celeba_photos(tmp_path)
    script = _script("preprocess_celeba64")
    script.main([str(photos), str(partition), str(tmp_path / "celebA"), "--workers", "1", "--lossless-png"])
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(photos), str(partition), str(tmp_path / "celebA"), "--workers", "1"])
    assert exit_info.value.code == 2 and "already holds .png crops" in capsys.readouterr().err
    assert not list((tmp_path / "celebA").rglob("*.jpg"))


def test_bad_partition_line_is_named(tmp_path):
    (tmp_path / "p.txt").write_text("000001.jpg 7\n")
    with pytest.raises(ValueError, match=r"p\.txt:1"):
        _script("preprocess_celeba64").read_partition(tmp_path / "p.txt")


def test_offline_resize_matches_the_loaders_bilinear_resize(tmp_path, writers):
    images = writers.random_images(3, 40, seed=2)
    writers.write_png_folder(tmp_path / "big", images, nested=True)
    _script("resize_images").main([str(tmp_path / "big"), str(tmp_path / "small"), "--resolution", "16",
                                   "--workers", "1"])
    out = tmp_path / "small" / "part1" / "img_001.png"
    expected = Image.fromarray(images[1]).resize((16, 16), Image.BILINEAR)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def _write_images(folder, count, writers, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(writers.random_images(count, 8, seed=seed)):
        Image.fromarray(image).save(folder / f"{seed}_{i:03d}.png")


def test_random_split_refuses_a_second_split_into_the_same_folder(tmp_path, writers, capsys):
    """Issue 12 item 3: a second run would put images of one split into the other and overwrite val_files.txt."""
    script = _script("random_split")
    _write_images(tmp_path / "first", 6, writers, seed=0)
    script.main([str(tmp_path / "first"), str(tmp_path / "out"), "2"])
    before = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    _write_images(tmp_path / "second", 6, writers, seed=1)
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "second"), str(tmp_path / "out"), "2", "--copy"])
    assert exit_info.value.code == 2 and "holds a split already" in capsys.readouterr().err
    after = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before and len(list((tmp_path / "second").iterdir())) == 6  # nothing moved or rewritten


def test_random_split_accepts_empty_split_folders(tmp_path, writers):
    (tmp_path / "out" / "train_data").mkdir(parents=True)
    _write_images(tmp_path / "in", 5, writers)
    _script("random_split").main([str(tmp_path / "in"), str(tmp_path / "out"), "1"])
    assert len(list((tmp_path / "out" / "train_data").iterdir())) == 4


@pytest.mark.parametrize("out", [".", "small", "part1/small"])
def test_resize_refuses_to_write_into_its_input_folder(tmp_path, writers, capsys, out):
    """Issue 12 item 3: `resize_images.py SRC SRC` overwrote the originals in place."""
    images = writers.random_images(2, 20, seed=4)
    writers.write_png_folder(tmp_path / "big", images, nested=True)
    before = {p: p.read_bytes() for p in (tmp_path / "big").rglob("*.png")}
    with pytest.raises(SystemExit) as exit_info:
        _script("resize_images").main([str(tmp_path / "big"), str(tmp_path / "big" / out), "--resolution", "8",
                                       "--workers", "1"])
    assert exit_info.value.code == 2 and "input folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "big").rglob("*.png")} == before


def test_resize_refuses_an_output_folder_that_contains_the_input(tmp_path, writers, capsys):
    writers.write_png_folder(tmp_path / "data" / "big", writers.random_images(1, 20), nested=False)
    with pytest.raises(SystemExit) as exit_info:
        _script("resize_images").main([str(tmp_path / "data" / "big"), str(tmp_path / "data"), "--resolution", "8",
                                       "--workers", "1"])
    assert exit_info.value.code == 2 and "contains the input folder" in capsys.readouterr().err


def test_resize_refuses_its_input_folder_through_a_symlink(tmp_path, writers, capsys):
    writers.write_png_folder(tmp_path / "big", writers.random_images(1, 20), nested=False)
    (tmp_path / "alias").symlink_to(tmp_path / "big")
    with pytest.raises(SystemExit) as exit_info:
        _script("resize_images").main([str(tmp_path / "big"), str(tmp_path / "alias"), "--resolution", "8",
                                       "--workers", "1"])
    assert exit_info.value.code == 2
