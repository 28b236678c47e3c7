"""Likelihoods, KL and loss normalisation (SPEC.md section 5) against scipy / numpy written from the definitions."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from efficient_vdvae_common.objective import gaussian_kl
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_jax.model.losses import compute_loss, gamma_balanced_kl, kl_per_variate
from efficient_vdvae_jax.model.output_distribution import bernoulli_log_prob, mol_log_prob, sample_mol
from tests.jax.helpers import load_reference_config, load_tiny_config

M, C = 2, 3


def mol_config(*overrides: str):
    return load_reference_config(f"model.num_output_mixtures={M}", *overrides)


def pack_logits(mixture_logits, means, raw_scales, raw_coefs):
    """(B,H,W,M) and three (B,H,W,M,C) -> logits in the (3M, C) channel layout: channel M + j*C + c."""
    params = np.concatenate([means, raw_scales, raw_coefs], axis=-2)  # B,H,W,3M,C
    return np.concatenate([mixture_logits, params.reshape(params.shape[:3] + (-1,))], axis=-1).astype(np.float32)


def reference_mol_log_prob(targets, mixture_logits, means, scales, coefs, n_classes, min_pix, max_pix):
    """Per-pixel log p from the logistic CDF (scipy), one pixel and one component at a time."""
    B, H, W, _ = targets.shape
    out = np.zeros((B, H, W))
    min_pix, max_pix = np.float32(min_pix), np.float32(max_pix)  # the targets are float32
    log_weights = mixture_logits - special.logsumexp(mixture_logits, axis=-1, keepdims=True)
    for b, h, w in np.ndindex(B, H, W):
        t = targets[b, h, w].astype(np.float64)
        per_component = []
        for k in range(M):
            mu, s, a = means[b, h, w, k], scales[b, h, w, k], coefs[b, h, w, k]
            centres = [mu[0], mu[1] + a[0] * t[0], mu[2] + a[1] * t[0] + a[2] * t[1]]
            log_p = 0.0
            for c in range(C):
                dist = stats.logistic(loc=centres[c], scale=s[c])
                if t[c] == min_pix:
                    log_p += dist.logcdf(t[c] + 1 / n_classes)
                elif t[c] == max_pix:
                    log_p += dist.logsf(t[c] - 1 / n_classes)
                else:
                    log_p += math.log(dist.cdf(t[c] + 1 / n_classes) - dist.cdf(t[c] - 1 / n_classes))
            per_component.append(log_p + log_weights[b, h, w, k])
        out[b, h, w] = special.logsumexp(per_component)
    return out


@pytest.mark.parametrize("num_bits", [8, 5])
def test_mol_log_prob_matches_logistic_cdf(num_bits):
    hp = mol_config(f"data.num_bits={num_bits}")
    rng = np.random.default_rng(0)
    shape = (2, 3, 3, M, C)
    levels = (np.arange(0, 256, 2 ** (8 - num_bits)) - 127.5) / 127.5
    min_pix, max_pix = levels[0], levels[-1]
    targets = rng.choice(levels, size=(2, 3, 3, C)).astype(np.float32)
    targets[0, 0, 0] = [min_pix, max_pix, levels[3]]  # both edge cases
    mixture_logits = rng.normal(size=shape[:-1])
    means = rng.uniform(-1, 1, size=shape)
    raw_scales = rng.uniform(-2, 0, size=shape)
    raw_coefs = rng.normal(size=shape)
    logits = pack_logits(mixture_logits, means, raw_scales, raw_coefs)

    b = hp.model.output_gradient_smoothing_beta
    scales = np.log1p(np.exp(b * raw_scales.astype(np.float32).astype(np.float64))) / b
    expected = reference_mol_log_prob(targets, mixture_logits.astype(np.float32), means.astype(np.float32),
                                 scales, np.tanh(raw_coefs.astype(np.float32)), 2 ** num_bits - 1, min_pix, max_pix)
    np.testing.assert_allclose(mol_log_prob(jnp.asarray(targets), jnp.asarray(logits), OutputDistribution.from_hparams(hp)), expected, rtol=2e-4)


def test_bernoulli_log_prob_on_the_central_crop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 32, 32, 1)).astype(np.float32)
    targets = (rng.uniform(size=(2, 32, 32, 1)) < 0.5).astype(np.float32)
    p = special.expit(logits[:, 2:30, 2:30, 0].astype(np.float64))
    expected = stats.bernoulli.logpmf(targets[:, 2:30, 2:30, 0], p)
    np.testing.assert_allclose(bernoulli_log_prob(jnp.asarray(targets), jnp.asarray(logits)), expected, rtol=1e-5)


def closed_form_kl(mean_p, std_p, mean_q, std_q):
    """KL(N(mp, sp^2) || N(mq, sq^2)) = log(sq/sp) + (sp^2 + (mp-mq)^2) / (2 sq^2) - 1/2."""
    return np.log(std_q / std_p) + (std_p ** 2 + (mean_p - mean_q) ** 2) / (2 * std_q ** 2) - 0.5


@pytest.mark.parametrize("base", ["std", "logstd"])
def test_gaussian_kl_closed_form(base):
    hp = load_reference_config(f"model.distribution_base='{base}'")
    b = hp.model.gradient_smoothing_beta
    rng = np.random.default_rng(2)
    mp, mq = rng.normal(size=(2, 50))
    raw_p, raw_q = rng.uniform(-1, 1, size=(2, 50))
    std_p, std_q = (np.exp(b * raw_p), np.exp(b * raw_q)) if base == "logstd" else (np.exp(raw_p), np.exp(raw_q))
    scale_p, scale_q = (raw_p, raw_q) if base == "logstd" else (std_p, std_q)
    kl = gaussian_kl((jnp.asarray(mp), jnp.asarray(scale_p)), (jnp.asarray(mq), jnp.asarray(scale_q)), base, b, jnp)
    np.testing.assert_allclose(kl, closed_form_kl(mp, std_p, mq, std_q), rtol=1e-4, atol=1e-6)


def test_kl_per_variate_averages_positions_in_bits_per_image():
    hp = load_reference_config()  # the 'std' base
    rng = np.random.default_rng(4)
    shapes = [(2, 2, 2, 8), (2, 4, 4, 8)]  # NHWC, one group per resolution
    posterior = [(rng.normal(size=shape), rng.uniform(0.5, 2.0, size=shape)) for shape in shapes]
    prior = [(rng.normal(size=shape), rng.uniform(0.5, 2.0, size=shape)) for shape in shapes]
    ours = kl_per_variate(hp, [tuple(map(jnp.asarray, s)) for s in posterior],
                          [tuple(map(jnp.asarray, s)) for s in prior])
    assert ours.shape == (2, 2, 8)
    for group, ((mp, sp), (mq, sq)) in enumerate(zip(posterior, prior)):
        expected = closed_form_kl(mp, sp, mq, sq).mean(axis=(1, 2)) / math.log(2)
        np.testing.assert_allclose(ours[:, group], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaled_gamma", [True, False])
def test_gamma_balancing_weights_and_stops_gradient(scaled_gamma):
    hp = load_reference_config(f"loss.scaled_gamma={scaled_gamma}")
    kl = jnp.asarray([0.5, 1.0, 2.0, 0.25])
    avg = jnp.asarray([4.0, 1.0, 1.0, 2.0])
    a = np.asarray(avg if scaled_gamma else kl)
    alpha = 4 * a / a.sum()
    assert float(gamma_balanced_kl(hp, kl, avg, 0)) == pytest.approx(float(np.dot(alpha, kl)), rel=1e-6)
    assert float(gamma_balanced_kl(hp, kl, avg, hp.loss.gamma_max_steps)) == pytest.approx(float(np.dot(alpha, kl)), rel=1e-6)
    assert float(gamma_balanced_kl(hp, kl, avg, hp.loss.gamma_max_steps + 1)) == pytest.approx(3.75)
    # alpha is a constant: d/d kl = alpha, even when the weights are computed from kl itself.
    grad = jax.grad(lambda k: gamma_balanced_kl(hp, k, avg, 0))(kl)
    np.testing.assert_allclose(grad, alpha, rtol=1e-6)



def test_compute_loss_normalisations():
    """kl_g = sum / (B*D); avg_g = mean / ln 2; loss = recon + beta * sum_g kl_g with gamma off."""
    hp = load_tiny_config("loss.use_gamma_schedule=False")  # 8x8 RGB, M = 2
    rng = np.random.default_rng(3)
    B = 2
    x = jnp.asarray(rng.choice([-1.0, 0.0, 1.0], size=(B, 8, 8, C)).astype(np.float32))
    logits = jnp.asarray(rng.normal(size=(B, 8, 8, M * (3 * C + 1))).astype(np.float32))
    post = [(rng.normal(size=(B, 1, 1, 3)), np.exp(rng.normal(size=(B, 1, 1, 3)))),
            (rng.normal(size=(B, 2, 2, 3)), np.exp(rng.normal(size=(B, 2, 2, 3))))]
    prior = [(np.zeros((B, 1, 1, 3)), np.ones((B, 1, 1, 3))), (np.zeros((B, 2, 2, 3)), np.ones((B, 2, 2, 3)))]
    as_jnp = lambda groups: [(jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32)) for m, s in groups]  # noqa: E731
    out = compute_loss(hp, x, logits, as_jnp(post), as_jnp(prior), step=3000)

    D = 8 * 8 * C
    kls = [closed_form_kl(m, s, 0.0, 1.0) for m, s in post]
    np.testing.assert_allclose(out.kl_per_group, [k.sum() / (B * D) for k in kls], rtol=1e-5)
    np.testing.assert_allclose(out.avg_kl_per_group, [k.mean() / math.log(2) for k in kls], rtol=1e-5)
    recon = -float(np.sum(mol_log_prob(x, logits, OutputDistribution.from_hparams(hp)))) / (B * D)
    beta = (3000 - 21) / 5021
    assert float(out.recon_loss) == pytest.approx(recon, rel=1e-6)
    assert float(out.beta) == pytest.approx(beta, rel=1e-6)
    assert float(out.loss) == pytest.approx(recon + beta * sum(k.sum() for k in kls) / (B * D), rel=1e-5)
    assert float(out.nelbo) == pytest.approx((recon + sum(k.sum() for k in kls) / (B * D)) / math.log(2), rel=1e-5)
    evaluation = compute_loss(hp, x, logits, as_jnp(post), as_jnp(prior), step=None)
    assert float(evaluation.beta) == 1.0
    assert float(evaluation.loss) == pytest.approx(float(evaluation.nelbo) * math.log(2), rel=1e-5)


def test_mnist_reports_nats_per_image():
    hp = load_reference_config("data.dataset_source='binarized_mnist'", "data.channels=1")
    rng = np.random.default_rng(4)
    x = jnp.asarray((rng.uniform(size=(2, 32, 32, 1)) < 0.5).astype(np.float32))
    logits = jnp.asarray(rng.normal(size=(2, 32, 32, 1)).astype(np.float32))
    stats_ = [(jnp.zeros((2, 4, 4, 2)), jnp.ones((2, 4, 4, 2)))]
    out = compute_loss(hp, x, logits, stats_, stats_, step=None)
    per_image = -float(jnp.sum(bernoulli_log_prob(x, logits))) / 2
    assert float(out.recon_loss) == pytest.approx(per_image / 784, rel=1e-6)
    assert float(out.nelbo) == pytest.approx(per_image, rel=1e-5)


def test_mol_sample_without_noise_follows_the_autoregression():
    """Near-zero scales and one dominant component: x = clipped AR means of that component."""
    hp = mol_config("synthesis.output_temperature=1.")
    rng = np.random.default_rng(5)
    means = rng.uniform(-0.8, 0.8, size=(1, 2, 2, M, C))
    coefs_raw = rng.normal(size=(1, 2, 2, M, C))
    mixture_logits = np.array([-1e4, 1e4]) * np.ones((1, 2, 2, M))
    logits = pack_logits(mixture_logits, means, np.full(means.shape, -1e3), coefs_raw)
    x = np.asarray(sample_mol(jnp.asarray(logits), OutputDistribution.from_hparams(hp), jax.random.PRNGKey(0)))
    mu, a = means[..., 1, :], np.tanh(coefs_raw[..., 1, :])
    r = np.clip(mu[..., 0], -1, 1)
    g = np.clip(mu[..., 1] + a[..., 0] * r, -1, 1)
    b = np.clip(mu[..., 2] + a[..., 1] * r + a[..., 2] * g, -1, 1)
    np.testing.assert_allclose(x, np.stack([r, g, b], axis=-1), atol=1e-5)
