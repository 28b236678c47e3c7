"""Analytic KL against Monte Carlo, and the normalisations of compute_loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from efficient_vdvae_torch.model import compute_loss
from efficient_vdvae_common.objective import gaussian_kl
from efficient_vdvae_torch.model.losses import count_active_groups, kl_per_variate

BETA = 0.6931472


@pytest.mark.parametrize("base", ["std", "logstd"])
def test_analytic_kl_matches_monte_carlo(base):
    rng = np.random.default_rng(0)
    mean_p, mean_q = np.array([0.3, -1.0, 0.0]), np.array([0.0, 0.5, 0.2])
    if base == "std":
        scale_p, scale_q = np.array([0.5, 1.2, 0.9]), np.array([1.0, 0.7, 1.1])
        std_p, std_q = scale_p, scale_q
    else:
        scale_p, scale_q = np.array([-1.0, 0.3, -0.2]), np.array([0.0, -0.5, 0.1])
        std_p, std_q = np.exp(BETA * scale_p), np.exp(BETA * scale_q)
    ours = gaussian_kl((torch.tensor(mean_p), torch.tensor(scale_p)), (torch.tensor(mean_q), torch.tensor(scale_q)),
                       base, BETA, torch).numpy()

    z = mean_p + std_p * rng.standard_normal((400_000, 3))
    log_ratio = stats.norm.logpdf(z, mean_p, std_p) - stats.norm.logpdf(z, mean_q, std_q)
    estimate, stderr = log_ratio.mean(axis=0), log_ratio.std(axis=0) / math.sqrt(len(z))
    assert np.all(np.abs(ours - estimate) < 5 * stderr + 1e-4), (ours, estimate, stderr)


def random_stats(generator, shapes):
    def pair(shape):
        return torch.randn(shape, generator=generator), torch.rand(shape, generator=generator) + 0.5
    return [pair(s) for s in shapes], [pair(s) for s in shapes]


def test_compute_loss_normalisations_and_gamma_balancing(reference_config):
    hp = reference_config  # Linear beta, gamma balancing on up to step 10000, scaled_gamma
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=g).float() / 127.5 - 1.0
    logits = torch.randn(2, 100, 32, 32, generator=g)
    shapes = [(2, 8, 2, 2), (2, 8, 8, 8), (2, 4, 32, 32)]
    posterior, prior = random_stats(g, shapes)

    out = compute_loss(hp, x, logits, posterior, prior, step=4000)
    kl_sums, kl_means = [], []
    for (mp, sp), (mq, sq) in zip(posterior, prior):
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mp.double(), sp.double()),
                                               torch.distributions.Normal(mq.double(), sq.double()))
        kl_sums.append(kl.sum().item())
        kl_means.append(kl.mean().item())
    expected_kl_per_group = np.array(kl_sums) / (2 * 32 * 32 * 3)
    expected_avg = np.array(kl_means) / math.log(2)
    np.testing.assert_allclose(out.kl_per_group.numpy(), expected_kl_per_group, rtol=1e-5)
    np.testing.assert_allclose(out.avg_kl_per_group.numpy(), expected_avg, rtol=1e-5)
    assert out.kl_div.item() == pytest.approx(expected_kl_per_group.sum() / math.log(2), rel=1e-5)
    assert out.recon_report.item() == pytest.approx(out.recon_loss.item() / math.log(2), rel=1e-6)
    assert out.nelbo.item() == pytest.approx(out.recon_report.item() + out.kl_div.item(), rel=1e-6)

    beta = (4000 - 21) / (21 + 5000)
    alpha = 3 * expected_avg / expected_avg.sum()
    assert alpha.sum() == pytest.approx(3.0)
    assert out.beta == pytest.approx(beta)
    assert out.loss.item() == pytest.approx(out.recon_loss.item() + beta * np.dot(alpha, expected_kl_per_group),
                                            rel=1e-6)

    # Past gamma_max_steps the KL terms are summed; in evaluation beta is 1.
    late = compute_loss(hp, x, logits, posterior, prior, step=10001)
    assert late.loss.item() == pytest.approx(out.recon_loss.item() + 1.0 * expected_kl_per_group.sum(), rel=1e-6)
    evaluation = compute_loss(hp, x, logits, posterior, prior, step=None)
    assert evaluation.beta == 1.0
    assert evaluation.loss.item() == pytest.approx(late.loss.item(), rel=1e-7)


def test_unscaled_gamma_balances_on_the_per_image_kl(make_config):
    hp = make_config("loss.scaled_gamma=False")
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 3, 32, 32)
    posterior, prior = random_stats(g, [(2, 8, 2, 2), (2, 8, 16, 16)])
    out = compute_loss(hp, x, torch.zeros(2, 100, 32, 32), posterior, prior, step=0)
    kl = out.kl_per_group.double().numpy()
    alpha = 2 * kl / kl.sum()
    assert out.loss.item() == pytest.approx(out.recon_loss.item() + out.beta * np.dot(alpha, kl), rel=1e-6)


def test_gamma_weights_carry_no_gradient(reference_config):
    mean = torch.zeros(1, 2, 4, 4, requires_grad=True)
    posterior = [(mean[:, :1], torch.ones(1, 1, 4, 4)), (mean[:, 1:], torch.ones(1, 1, 4, 4))]
    prior = [(torch.full((1, 1, 4, 4), 1.0), torch.ones(1, 1, 4, 4)),
             (torch.full((1, 1, 4, 4), 2.0), torch.ones(1, 1, 4, 4))]
    out = compute_loss(reference_config, torch.zeros(1, 3, 32, 32), torch.zeros(1, 100, 32, 32),
                       posterior, prior, step=0)
    (out.loss - out.recon_loss).backward()
    # d/dmean of alpha_g * kl_g with constant alpha_g = 2 * kl_g / (kl_0 + kl_1): kl_0 = 0.5, kl_1 = 2 (per element).
    alpha = np.array([2 * 0.5 / 2.5, 2 * 2.0 / 2.5])
    dims = 32 * 32 * 3
    expected = out.beta * alpha * np.array([-1.0, -2.0]) / dims  # d kl / d mean = (mean - prior_mean)
    np.testing.assert_allclose(mean.grad[0, :, 0, 0].numpy(), expected, rtol=1e-5)


def test_binarized_mnist_reports_nats_per_image(make_config):
    hp = make_config("data.dataset_source=binarized_mnist", "data.channels=1")
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 1, 32, 32, generator=g) < 0.3).float()
    logits = torch.randn(2, 1, 32, 32, generator=g)
    posterior, prior = random_stats(g, [(2, 8, 2, 2)])
    out = compute_loss(hp, x, logits, posterior, prior, step=None)
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits[..., 2:30, 2:30], x[..., 2:30, 2:30],
                                                               reduction="sum").item()
    kl = gaussian_kl(posterior[0], prior[0], "std", BETA, torch).sum().item()
    assert out.recon_loss.item() == pytest.approx(nll / (2 * 784), rel=1e-5)
    assert out.recon_report.item() == pytest.approx(nll / 2, rel=1e-5)
    assert out.kl_div.item() == pytest.approx(kl / 2, rel=1e-5)
    assert out.nelbo.item() == pytest.approx((nll + kl) / 2, rel=1e-5)


def test_count_active_groups():
    assert count_active_groups(torch.tensor([0.0, 1e-4, 5e-5, 0.3]), 1e-4) == 2


def test_kl_per_variate_averages_positions_in_bits_per_image(reference_config):
    g = torch.Generator().manual_seed(3)
    posterior, prior = random_stats(g, [(2, 8, 2, 2), (2, 8, 4, 4)])
    ours = kl_per_variate(reference_config, posterior, prior)
    assert ours.shape == (2, 2, 8)
    (mp, sp), (mq, sq) = posterior[1], prior[1]
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mp, sp), torch.distributions.Normal(mq, sq))
    torch.testing.assert_close(ours[:, 1], kl.reshape(2, 8, -1).mean(dim=2) / math.log(2))
    # Its mean over images and variates is the group's average KL.
    out = compute_loss(reference_config, torch.zeros(2, 3, 32, 32), torch.zeros(2, 100, 32, 32),
                       posterior, prior, step=None)
    torch.testing.assert_close(ours.mean(dim=(0, 2)), out.avg_kl_per_group)
