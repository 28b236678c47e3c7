"""Discretized logistic mixture and Bernoulli likelihoods, checked against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logsumexp, softmax

from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_torch.model.output_distribution import bernoulli_log_prob, mol_log_prob, sample_mol

BETA = 0.6931472


def make_dist(channels=3, mixtures=2, num_bits=8.0, base="std"):
    return OutputDistribution(bernoulli=False, num_mixtures=mixtures, channels=channels, num_bits=num_bits,
                              base=base, smoothing_beta=BETA, min_log_scale=-250.0)


def pack_logits(mixture_logits, means, raw_scales, raw_coeffs):
    """Logits (1, M*(3C+1), 1, P) from per-parameter arrays shaped (C, M, P) and (M, P)."""
    per_channel = np.concatenate([means, raw_scales, raw_coeffs], axis=1)  # C, 3M, P
    flat = np.concatenate([mixture_logits, per_channel.reshape(-1, per_channel.shape[-1])], axis=0)
    return torch.tensor(flat[None, :, None, :], dtype=torch.float32)


def grid_values(num_bits):
    step = 2 ** (8 - int(num_bits))
    return (np.arange(0, 256, step) - 127.5) / 127.5


def scipy_bin_probability(t, loc, scale, num_bits):
    """P(pixel bin t) under a logistic: CDF differences, with open-ended edge bins."""
    half = 1.0 / (2 ** num_bits - 1)
    low, high = grid_values(num_bits)[[0, -1]]
    upper = stats.logistic.cdf(t + half, loc=loc, scale=scale)
    lower = stats.logistic.cdf(t - half, loc=loc, scale=scale)
    return np.where(np.isclose(t, low), upper, np.where(np.isclose(t, high), 1.0 - lower, upper - lower))


def softplus(x, beta=BETA):
    return np.log1p(np.exp(beta * x)) / beta


@pytest.mark.parametrize("num_bits", [8.0, 5.0])
def test_rgb_mixture_matches_scipy_logistic_cdf_differences(num_bits):
    rng = np.random.default_rng(0)
    grid = grid_values(num_bits)
    # Every pixel position gets its own targets; both edge bins of every channel occur.
    targets = rng.choice(grid, size=(3, 40))
    targets[:, :3] = grid[0]
    targets[:, 3:6] = grid[-1]
    targets[0, 6], targets[1, 7], targets[2, 8] = grid[0], grid[-1], grid[0]
    m, c, p = 3, 3, targets.shape[1]
    mixture_logits = rng.normal(size=(m, p))
    raw_scales = rng.uniform(-4.0, -0.5, size=(c, m, p))
    raw_coeffs = rng.normal(size=(c, m, p))
    # Component centres near the targets keep every bin probability well above 1e-5.
    locs = targets[:, None, :] + rng.uniform(-0.3, 0.3, size=(c, m, p))
    coeffs = np.tanh(raw_coeffs)
    r, g, b = targets
    means = np.stack([locs[0], locs[1] - coeffs[0] * r, locs[2] - coeffs[1] * r - coeffs[2] * g])

    dist = make_dist(channels=c, mixtures=m, num_bits=num_bits)
    ours = mol_log_prob(torch.tensor(targets[None, :, None, :], dtype=torch.float32),
                        pack_logits(mixture_logits, means, raw_scales, raw_coeffs), dist)[0, 0].double().numpy()

    # The autoregressive centres, as the SPEC states them.
    centres = np.stack([means[0], means[1] + coeffs[0] * r, means[2] + coeffs[1] * r + coeffs[2] * g])
    probs = scipy_bin_probability(targets[:, None, :], centres, softplus(raw_scales), num_bits)  # C, M, P
    assert probs.min() > 1e-5
    expected = logsumexp(np.log(probs).sum(axis=0) + np.log(softmax(mixture_logits, axis=0)), axis=0)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5)


def test_single_channel_mixture_matches_scipy():
    rng = np.random.default_rng(1)
    targets = rng.choice(grid_values(8), size=(1, 30))
    targets[0, :2] = [-1.0, 1.0]
    m = 4
    mixture_logits, means = rng.normal(size=(m, 30)), rng.uniform(-1, 1, size=(1, m, 30))
    raw_scales, raw_coeffs = rng.uniform(-5, -2, size=(1, m, 30)), rng.normal(size=(1, m, 30))
    ours = mol_log_prob(torch.tensor(targets[None, :, None, :], dtype=torch.float32),
                        pack_logits(mixture_logits, means, raw_scales, raw_coeffs),
                        make_dist(channels=1, mixtures=m))[0, 0].double().numpy()
    probs = scipy_bin_probability(targets[0][None, :], means[0], softplus(raw_scales[0]), 8)
    expected = logsumexp(np.log(probs) + np.log(softmax(mixture_logits, axis=0)), axis=0)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5)


def test_logstd_base_uses_exp_of_beta_times_log_scale():
    targets = np.array([[-0.2, 0.3, 0.0]])
    means, raw = np.array([[[0.0, 0.25, -0.1]]]), np.array([[[-4.0, -3.0, -5.0]]])
    ours = mol_log_prob(torch.tensor(targets[None, :, None, :], dtype=torch.float32),
                        pack_logits(np.zeros((1, 3)), means, raw, np.zeros((1, 1, 3))),
                        make_dist(channels=1, mixtures=1, base="logstd"))[0, 0].double().numpy()
    expected = np.log(scipy_bin_probability(targets[0], means[0, 0], np.exp(BETA * raw[0, 0]), 8))
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_tail_bins_use_the_density_at_the_bin_centre():
    """Where the CDF difference is below 1e-5, log p = log(pdf(t) * bin width)."""
    target, loc, raw = 0.6, -0.5, -8.0
    scale = softplus(raw)
    assert scipy_bin_probability(np.array(target), loc, scale, 8) < 1e-5
    ours = mol_log_prob(torch.tensor([[[[target]]]]), pack_logits(np.zeros((1, 1)), np.array([[[loc]]]),
                                                                   np.array([[[raw]]]), np.zeros((1, 1, 1))),
                        make_dist(channels=1, mixtures=1))[0, 0, 0].item()
    expected = stats.logistic.logpdf(target, loc=loc, scale=scale) + math.log(2 / 255)
    assert ours == pytest.approx(expected, rel=1e-4)


def test_bernoulli_matches_scipy_on_the_centre_crop():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 1, 32, 32)) * 3
    targets = (rng.uniform(size=(2, 1, 32, 32)) < 0.5).astype(np.float32)
    ours = bernoulli_log_prob(torch.tensor(targets), torch.tensor(logits, dtype=torch.float32)).double().numpy()
    expected = stats.bernoulli.logpmf(targets[:, :, 2:30, 2:30], expit(logits[:, :, 2:30, 2:30]))
    assert ours.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_sampled_single_logistic_follows_its_cdf():
    loc, raw = 0.1, -3.0
    logits = pack_logits(np.zeros((1, 1)), np.array([[[loc]]]), np.array([[[raw]]]), np.zeros((1, 1, 1)))
    logits = logits.expand(20000, -1, -1, -1)
    x = sample_mol(logits, make_dist(channels=1, mixtures=1), generator=torch.Generator().manual_seed(0))
    result = stats.kstest(x.flatten().double().numpy(), stats.logistic(loc=loc, scale=softplus(raw)).cdf)
    assert result.pvalue > 0.01


def test_sampler_picks_components_by_their_weights_and_scales_with_temperature():
    # Two sharp components at -0.5 and 0.5 with weights 1/4 and 3/4.
    logits = pack_logits(np.array([[0.0], [math.log(3.0)]]), np.array([[[-0.5], [0.5]]]),
                         np.array([[[-5.0], [-5.0]]]), np.zeros((1, 2, 1))).expand(20000, -1, -1, -1)
    dist = make_dist(channels=1, mixtures=2)
    x = sample_mol(logits, dist, generator=torch.Generator().manual_seed(1)).flatten()
    assert (x > 0).double().mean().item() == pytest.approx(0.75, abs=0.015)
    hot = sample_mol(logits, dist, temperature=2.0, generator=torch.Generator().manual_seed(1)).flatten()
    cold = sample_mol(logits, dist, temperature=0.5, generator=torch.Generator().manual_seed(1)).flatten()
    upper_hot, upper_cold = hot[hot > 0], cold[cold > 0]
    # Higher temperature flattens the mixture weights and widens each logistic.
    assert (hot > 0).double().mean() < 0.75 < (cold > 0).double().mean()
    assert upper_hot.std() > 3 * upper_cold.std()


def test_rgb_sample_applies_the_coefficients_and_clips():
    # Near-deterministic logistics (tiny scales): x_r = 0.4, x_g = 0.1 + c0 x_r, x_b = clip(0.9 + c1 x_r + c2 x_g).
    raw_coeff = np.array([0.5, 1.0, -0.3])
    logits = pack_logits(np.zeros((1, 1)), np.array([[[0.4]], [[0.1]], [[0.9]]]), np.full((3, 1, 1), -12.0),
                         raw_coeff.reshape(3, 1, 1))
    x = sample_mol(logits, make_dist(channels=3, mixtures=1), generator=torch.Generator().manual_seed(0))
    c = np.tanh(raw_coeff)
    x_r, x_g = 0.4, 0.1 + c[0] * 0.4
    x_b = min(0.9 + c[1] * x_r + c[2] * x_g, 1.0)
    np.testing.assert_allclose(x.flatten().numpy(), [x_r, x_g, x_b], atol=1e-3)
    assert x_b == 1.0
