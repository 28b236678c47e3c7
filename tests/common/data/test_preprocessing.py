"""Pixel preprocessing against hand-computed values (SPEC section 1)."""
import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.data import preprocessing


def test_bit_reduction_keeps_multiples_of_8_for_5_bits():
    pixels = np.array([0, 7, 8, 15, 127, 128, 247, 248, 255], dtype=np.uint8)
    assert preprocessing.reduce_bits(pixels, 5).tolist() == [0, 0, 8, 8, 120, 128, 240, 248, 248]
    assert preprocessing.reduce_bits(pixels, 8).tolist() == pixels.tolist()
    assert preprocessing.reduce_bits(pixels, 1).tolist() == [0, 0, 0, 0, 0, 128, 128, 128, 128]


@pytest.mark.parametrize("bad", [0, 9, 5.5])
def test_bit_reduction_rejects_bad_bit_counts(bad):
    with pytest.raises(ValueError, match="num_bits"):
        preprocessing.reduce_bits(np.zeros(3, np.uint8), bad)


def test_scaling_maps_to_minus_one_one():
    out = preprocessing.preprocess_pixels(np.array([0, 255, 128], dtype=np.uint8), 8)
    np.testing.assert_allclose(out, [-1.0, 1.0, 0.5 / 127.5], rtol=0, atol=1e-7)
    assert out.dtype == np.float32
    # 5 bits: the largest value is (248 - 127.5) / 127.5, min_pix/max_pix of the loss
    assert preprocessing.preprocess_pixels(np.array([255], np.uint8), 5)[0] == np.float32(120.5 / 127.5)


def test_flip_mirrors_width_axis_about_half_the_time():
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    rng = np.random.default_rng(0)
    results = [preprocessing.maybe_flip_horizontally(image, rng) for _ in range(400)]
    flipped = [r for r in results if not np.array_equal(r, image)]
    assert all(np.array_equal(r, image[:, [2, 1, 0]]) for r in flipped)
    assert 150 < len(flipped) < 250


def test_mnist_digit_is_padded_to_32_and_binarized():
    digit = np.full((28, 28), 255, dtype=np.uint8)
    digit[0, 0] = 0
    out = preprocessing.to_mnist_model_space(digit, np.random.default_rng(0))
    assert out.shape == (32, 32, 1) and out.dtype == np.float32
    assert out[2:30, 2:30].sum() == 28 * 28 - 1  # intensity 1 -> always 1, intensity 0 -> always 0
    assert out.sum() == out[2:30, 2:30].sum()  # the 2-pixel border is zero


def test_binarization_is_bernoulli_with_pixel_intensity():
    p = np.full((200, 200), 0.3, dtype=np.float32)
    sample = preprocessing.binarize(p, np.random.default_rng(1))
    assert set(np.unique(sample)) <= {0.0, 1.0}
    # 40000 draws: standard error ~0.0023
    assert abs(sample.mean() - 0.3) < 0.01


def test_celeba_crop_box_and_bilinear_resize():
    photo = Image.fromarray(np.arange(218 * 178 * 3, dtype=np.uint32).reshape(218, 178, 3).astype(np.uint8))
    cropped = preprocessing.crop_celeba(photo)
    assert cropped.size == (148, 148)
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(photo)[40:188, 15:163])
    assert preprocessing.resize_image(cropped, 64).size == (64, 64)
    # a constant image stays constant under bilinear resizing
    flat = Image.new("RGB", (50, 30), (10, 20, 30))
    assert np.all(np.asarray(preprocessing.resize_image(flat, 16)) == [10, 20, 30])
