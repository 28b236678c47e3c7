"""synthesis.output_sampling = 'mean': the output distribution's mean image, both frameworks,
against the mixture-of-logistics means written out by hand in numpy."""
from __future__ import annotations

import numpy as np
import pytest

from efficient_vdvae_common.output_distribution import OutputDistribution
from hparams import load_config
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES

M, H, W = 3, 2, 5


def _config(channels: int, num_bits: float, dataset_source: str = "custom"):
    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + (
        f"data.dataset_source={dataset_source}", f"data.channels={channels}", f"data.num_bits={num_bits}",
        f"model.num_output_mixtures={M}", "synthesis.output_sampling=mean"))


def _parameters(channels: int, seed: int = 0):
    """Mixture logits (B,M,H,W); per colour channel means, raw scales, raw coefficients (B,C,M,H,W)."""
    rng = np.random.default_rng(seed)
    shape = (2, channels, M, H, W)
    # Means up to +-1.6: some pixels' mixture means fall outside [-1, 1] and must be clipped.
    return (rng.normal(size=(2, M, H, W)) * 2, rng.uniform(-1.6, 1.6, size=shape), rng.normal(size=shape),
            rng.normal(size=shape) * 2)


def _hand_mean(mixture_logits, means, raw_coefficients, max_pix):
    """sum_k pi_k * location_k, per pixel and channel; location_k of green (blue) adds tanh(coefficient)
    times the component's red (and green) locations, each location clipped to [-1, max_pix]."""
    pi = np.exp(mixture_logits - mixture_logits.max(axis=1, keepdims=True))
    pi = pi / pi.sum(axis=1, keepdims=True)  # B, M, H, W
    coefficient = np.tanh(raw_coefficients)
    clip = lambda v: np.clip(v, -1.0, max_pix)  # noqa: E731
    red = clip(means[:, 0])
    locations = [red]
    if means.shape[1] == 3:
        green = clip(means[:, 1] + coefficient[:, 0] * red)  # (g <- r) is stored in channel 0's slots
        blue = clip(means[:, 2] + coefficient[:, 1] * red + coefficient[:, 2] * green)
        locations += [green, blue]
    return np.stack([(pi * location).sum(axis=1) for location in locations], axis=1)  # B, C, H, W


def _torch_logits(mixture_logits, means, raw_scales, raw_coefficients):
    """(B, M(3C+1), H, W): mixture logits, then per channel c the 3M block [means, scales, coefficients]."""
    b, c = means.shape[:2]
    per_channel = np.concatenate([means, raw_scales, raw_coefficients], axis=2)  # B, C, 3M, H, W
    return np.concatenate([mixture_logits, per_channel.reshape(b, c * 3 * M, H, W)], axis=1)


def _jax_logits(mixture_logits, means, raw_scales, raw_coefficients):
    """(B, H, W, M + 3M*C): mixture logits, then parameter j of colour c at M + j*C + c."""
    b, c = means.shape[:2]
    per_channel = np.concatenate([means, raw_scales, raw_coefficients], axis=2)  # B, C, 3M, H, W
    blocks = per_channel.transpose(0, 3, 4, 2, 1).reshape(b, H, W, 3 * M * c)
    return np.concatenate([mixture_logits.transpose(0, 2, 3, 1), blocks], axis=-1)


def _mean_torch(hp, parameters, bernoulli_logits=None):
    import torch

    from efficient_vdvae_torch.model.output_distribution import render_output

    dist = OutputDistribution.from_hparams(hp)
    logits = bernoulli_logits if bernoulli_logits is not None else _torch_logits(*parameters)
    images = render_output(torch.as_tensor(logits, dtype=torch.float32), dist, hp.synthesis.output_sampling)
    return images.numpy()  # B, C, H, W


def _mean_jax(hp, parameters, bernoulli_logits=None):
    import jax
    import jax.numpy as jnp

    from efficient_vdvae_jax.model.output_distribution import render_output

    logits = bernoulli_logits.transpose(0, 2, 3, 1) if bernoulli_logits is not None else _jax_logits(*parameters)
    images = render_output(jnp.asarray(logits, jnp.float32), OutputDistribution.from_hparams(hp), jax.random.PRNGKey(0),
                           hp.synthesis.output_sampling)
    return np.asarray(images).transpose(0, 3, 1, 2)


FRAMEWORKS = {"torch": _mean_torch, "jax": _mean_jax}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("channels, num_bits", [(3, 8), (1, 5)])
def test_mol_mean_equals_the_hand_computed_mixture_mean(framework, channels, num_bits):
    hp = _config(channels, num_bits)
    parameters = _parameters(channels)
    max_pix = (np.floor(255 / 2 ** (8 - num_bits)) * 2 ** (8 - num_bits) - 127.5) / 127.5
    expected = _hand_mean(parameters[0], parameters[1], parameters[3], max_pix)
    actual = FRAMEWORKS[framework](hp, parameters)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=2e-6)
    # Each component is clipped before the mixing (a far-off unlikely component cannot drag the mean):
    # the image differs from the clipped mixture of unclipped locations.
    pi = np.exp(parameters[0]) / np.exp(parameters[0]).sum(axis=1, keepdims=True)
    red_of_unclipped_locations = np.clip((pi * parameters[1][:, 0]).sum(axis=1), -1.0, max_pix)
    assert np.abs(red_of_unclipped_locations - actual[:, 0]).max() > 0.02
    most_likely = np.take_along_axis(parameters[1], parameters[0].argmax(axis=1)[:, None, None], axis=2)[:, :, 0]
    assert np.abs(actual - np.clip(most_likely, -1.0, max_pix)).max() > 0.1


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mean_is_deterministic_and_sample_is_not(framework):
    hp = _config(3, 8)
    parameters = _parameters(3, seed=1)
    first, second = FRAMEWORKS[framework](hp, parameters), FRAMEWORKS[framework](hp, parameters)
    np.testing.assert_array_equal(first, second)
    sampled = FRAMEWORKS[framework](load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + (
        "data.dataset_source=custom", f"model.num_output_mixtures={M}")), parameters)
    assert hp.synthesis.output_sampling == "mean" and sampled.shape == first.shape
    assert np.abs(sampled - first).max() > 0.05


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bernoulli_mean_is_the_probability_on_the_digit_crop(framework):
    hp = load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + (
        "data.dataset_source=binarized_mnist", "data.channels=1", "synthesis.output_sampling=mean"))
    logits = np.random.default_rng(2).normal(size=(2, 1, 32, 32)) * 3
    actual = FRAMEWORKS[framework](hp, None, bernoulli_logits=logits)
    np.testing.assert_allclose(actual, 1.0 / (1.0 + np.exp(-logits[:, :, 2:30, 2:30])), atol=1e-6)


def test_output_sampling_defaults_to_sample_and_rejects_other_values():
    from hparams import ConfigError

    assert load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES).synthesis.output_sampling == "sample"
    with pytest.raises(ConfigError, match="output_sampling"):
        load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + ("synthesis.output_sampling=mode",))
