"""Image conversion, PNG files and grids (efficient_vdvae_common.images)."""
import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.images import make_grid, model_space_to_uint8, write_png


def test_model_space_to_uint8_hand_values():
    x = np.array([-1.0, -0.5, 0.0, 1.0 / 127.5, 1.0, 1.2, -3.0])
    # -0.5 -> 63.75 -> 64; 0 -> 127.5 -> 128 (round half to even); 1/127.5 -> 128.5 -> 128.
    assert model_space_to_uint8(x).tolist() == [0, 64, 128, 128, 255, 255, 0]


def test_model_space_to_uint8_binarized():
    x = np.array([0.0, 1.0, 0.5, 0.2])
    assert model_space_to_uint8(x, binarized=True).tolist() == [0, 255, 128, 51]


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7, 1), (5, 7)])
def test_write_png_round_trip(tmp_path, shape):
    image = np.random.RandomState(0).randint(0, 256, size=shape).astype(np.uint8)
    path = tmp_path / "sub" / "img.png"
    write_png(path, image)
    read = np.asarray(Image.open(path)).reshape(5, 7, -1)  # PIL drops a single channel axis
    np.testing.assert_array_equal(read, image.reshape(5, 7, -1))


def test_write_png_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        write_png("unused.png", np.zeros((4, 4, 3), np.float32))


def test_make_grid_layout():
    images = np.stack([np.full((2, 3, 1), v, np.uint8) for v in (10, 20, 30)])
    grid = make_grid(images, n_cols=2, padding=1, pad_value=0)[:, :, 0]
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 10, 10, 10, 0, 20, 20, 20, 0],
        [0, 10, 10, 10, 0, 20, 20, 20, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 30, 30, 30, 0, 0, 0, 0, 0],
        [0, 30, 30, 30, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(grid, expected)


def test_make_grid_default_columns():
    assert make_grid(np.zeros((5, 4, 4, 3), np.uint8), padding=0).shape == (8, 12, 3)
