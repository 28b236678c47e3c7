"""The model arithmetic of efficient_vdvae_common.architecture against values worked out by hand
from the configs' lists, closed forms, and the data pipeline."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_common import architecture as arch
from efficient_vdvae_common.data.preprocessing import pad_mnist, preprocess_pixels
from efficient_vdvae_common.sources import SOURCES
from hparams import load_config
from hparams.schema import DATASET_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[2]
EGS = REPO_ROOT / "egs"


@pytest.fixture(scope="module")
def cifar10_baseline():
    return load_config(EGS / "cifar10_baseline.cfg")


def test_cifar10_baseline_latent_groups_and_resolutions(cifar10_baseline):
    hp = cifar10_baseline
    # down_strides = [1]*3 + [4] + [1]*3 + [2] + [1]*6 + [2] + [1]*6 + [2] + [1]*11: 33 levels, product 32.
    # down_n_blocks_per_res = [0]*15 + [4] + [0]*6 + [10] + [0]*10: 14 followers.
    assert arch.num_levels(hp) == 33
    assert arch.num_latent_groups(hp) == 33 + 14
    assert arch.top_resolution(hp) == 32 // 32
    assert arch.latent_resolutions(hp) == [1] * 3 + [4] * 4 + [8] * 7 + [16] * 7 + [32] * 12
    # Level 15 (resolution 16) has 1 + 4 groups, level 22 (resolution 32) 1 + 10.
    assert arch.group_levels(hp)[15:20] == [15] * 5 and arch.group_levels(hp)[26:37] == [22] * 11
    assert arch.group_shapes(hp) == [(32, 1)] * 3 + [(32, 4)] * 4 + [(32, 8)] * 7 + [(32, 16)] * 11 + [(32, 32)] * 22
    assert arch.output_channels(hp) == 10 * (3 * 3 + 1)
    assert arch.image_dims(hp) == 32 * 32 * 3


def test_reference_config_latent_groups_and_resolutions(reference_config):
    hp = reference_config  # down_strides [1, 4, 1, 2, 1, 2, 1], down_n_blocks_per_res [0, 0, 1, 0, 0, 2, 0]
    assert arch.num_levels(hp) == 7
    assert arch.num_latent_groups(hp) == 10
    assert arch.top_resolution(hp) == 2  # 32 / 16
    assert arch.latent_resolutions(hp) == [2, 8, 8, 16, 16, 32, 32]
    assert arch.group_levels(hp) == [0, 1, 2, 2, 3, 4, 5, 5, 5, 6]
    assert arch.group_shapes(hp) == [(8, 2), (8, 8), (8, 8), (8, 8), (8, 16), (8, 16),
                                     (8, 32), (8, 32), (8, 32), (8, 32)]


def test_init_scales_closed_form(cifar10_baseline, make_config):
    assert arch.stable_init_scale(cifar10_baseline) == pytest.approx(47 ** -0.5, rel=1e-15)
    assert arch.z_projection_init_scale(cifar10_baseline) == pytest.approx(47 ** -0.5, rel=1e-15)
    assert arch.prior_init_scale(cifar10_baseline) == 1.0
    unstable = make_config("model.stable_init=False", "model.initialize_prior_weights_as_zero=True")
    assert arch.stable_init_scale(unstable) == 1.0
    assert arch.z_projection_init_scale(unstable) == pytest.approx(10 ** -0.5, rel=1e-15)  # not tied to stable_init
    assert arch.prior_init_scale(unstable) == 0.0


def test_binarized_mnist_rules():
    hp = load_config(EGS / "binarized_mnist_baseline.cfg")
    assert arch.is_binarized_mnist(hp)
    assert arch.output_channels(hp) == 1
    assert arch.image_dims(hp) == 28 * 28
    assert arch.report_units_per_nat_per_dim(hp) == 784.0  # nats per image
    digit = np.arange(1, 28 * 28 + 1, dtype=np.float32).reshape(28, 28, 1)
    padded = pad_mnist(digit)  # the data pipeline's padding
    assert padded.shape == (32, 32, 1)
    np.testing.assert_array_equal(padded[arch.MNIST_CROP, arch.MNIST_CROP], digit)
    assert padded.sum() == digit.sum()  # nothing outside the crop


def test_report_units_are_bits_per_dim(cifar10_baseline):
    assert not arch.is_binarized_mnist(cifar10_baseline)
    assert arch.report_units_per_nat_per_dim(cifar10_baseline) == pytest.approx(math.log2(math.e), rel=1e-15)
    assert math.exp(arch.LN2) == pytest.approx(2.0, rel=1e-15)


def test_the_predicate_knows_every_source():
    assert set(SOURCES) == set(DATASET_SOURCES)
    assert [name for name, source in SOURCES.items() if source.binarized] == ["binarized_mnist"]


@pytest.mark.parametrize("num_bits", range(1, 9))
def test_pixel_range_is_what_the_data_pipeline_makes_of_0_and_255(num_bits):
    expected = preprocess_pixels(np.array([0, 255], dtype=np.uint8), num_bits)
    assert arch.pixel_range(num_bits) == pytest.approx(tuple(expected.astype(np.float64)), abs=1e-7)


def test_pixel_range_hand_values():
    assert arch.pixel_range(8.0) == (-1.0, 1.0)
    assert arch.pixel_range(5) == (-1.0, (248 - 127.5) / 127.5)  # 255 -> 31 * 8
