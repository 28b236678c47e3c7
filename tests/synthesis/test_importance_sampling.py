"""Issue 13 item 3: the importance-weighted NLL (efficient_vdvae_common.importance_sampling) and its use
by reconstruction in both frameworks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from efficient_vdvae_common.importance_sampling import importance_weighted_nll, sample_passes


def test_one_sample_is_the_single_sample_bound_exactly():
    log_weights = np.random.default_rng(0).normal(-3000.0, 50.0, size=(7, 1))
    assert np.array_equal(importance_weighted_nll(log_weights), -log_weights[:, 0])


def test_log_sum_exp_is_stable_and_exact():
    # Weights far below exp's range (a 64x64 image: thousands of nats): no underflow to -inf.
    log_weights = np.array([[-20000.0, -20000.0 + np.log(3.0)], [-5.0, -5.0]])
    np.testing.assert_allclose(importance_weighted_nll(log_weights), [20000.0 - np.log(2.0), 5.0], rtol=1e-15)


def test_passes_cover_every_image_and_sample_once():
    passes = list(sample_passes(num_images=3, num_samples=4, rows_per_pass=5))
    assert [len(p) for p in passes] == [5, 5, 2]
    assert np.concatenate(passes).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_converges_to_the_marginal_likelihood_of_a_linear_gaussian_model():
    """z ~ N(0, I_3), x | z ~ N(A z + b, 0.5^2 I_4): log p(x) in closed form (scipy); a deliberately
    mismatched Gaussian proposal q. The bound decreases with K and reaches -log p(x)."""
    rng = np.random.default_rng(1)
    a, b, sigma = rng.normal(size=(4, 3)), rng.normal(size=4), 0.5
    x = a @ rng.normal(size=3) + b + sigma * rng.normal(size=4)
    exact = -multivariate_normal(b, a @ a.T + sigma ** 2 * np.eye(4)).logpdf(x)

    # The true posterior N(m, S); the proposal shifts its mean and widens it by 1.3 (bounded weights).
    precision = np.eye(3) + a.T @ a / sigma ** 2
    s = np.linalg.inv(precision)
    m = s @ a.T @ (x - b) / sigma ** 2
    q = multivariate_normal(m + 0.5 * np.sqrt(np.diag(s)), 1.3 ** 2 * s)

    def bounds(k: int, repeats: int) -> np.ndarray:
        z = q.rvs(size=repeats * k, random_state=rng).reshape(repeats, k, 3)
        log_likelihood = norm.logpdf(x, z @ a.T + b, sigma).sum(-1)
        log_w = log_likelihood + norm.logpdf(z).sum(-1) - q.logpdf(z.reshape(-1, 3)).reshape(repeats, k)
        return importance_weighted_nll(log_w)

    means = {k: bounds(k, 200).mean() for k in (1, 10, 100, 1000)}
    # Standard errors of the means: about 0.11, 0.026, 0.008 and 0.0023.
    assert means[1] - exact > 0.5  # the single-sample bound (the ELBO) is loose
    assert 0.03 < means[10] - exact < 0.15
    assert means[100] - exact < 0.035
    assert abs(means[1000] - exact) < 0.008


# ---- Reconstruction on the tiny trained runs, both frameworks (in-process).

from hparams import load_config  # noqa: E402
from tests.jax_synthesis.conftest import jax_run  # noqa: E402,F401  (session fixture)


def _torch_reconstruct(run, num_samples: int, output_dir):
    import torch

    from efficient_vdvae_torch.synthesis import load_synthesis_model, reconstruct, seed_everything

    hp = load_config(run.saved_config, overrides=(f"synthesis.num_importance_samples={num_samples}",))
    model = load_synthesis_model(hp, torch.device("cpu"), run.root)
    seed_everything(hp.run.seed)
    return reconstruct(hp, model, torch.device("cpu"), output_dir)


def _jax_reconstruct(run, num_samples: int, output_dir):
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.synthesis import load_synthesis_params, reconstruct

    hp = load_config(run.saved_config, overrides=(f"synthesis.num_importance_samples={num_samples}",))
    model = UniversalAutoEncoder(hp)
    return reconstruct(hp, model, load_synthesis_params(hp, model, run.root), output_dir)


RECONSTRUCT = {"torch": (_torch_reconstruct, "tiny_run"), "jax": (_jax_reconstruct, "jax_run")}


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_k64_bound_is_below_the_elbo_and_leaves_it_unchanged(framework, request, tmp_path):
    reconstruct, fixture = RECONSTRUCT[framework]
    run = request.getfixturevalue(fixture)
    plain = reconstruct(run, 1, tmp_path / "k1")
    weighted = reconstruct(run, 64, tmp_path / "k64")
    # K = 1 reports the NELBO only; the ELBO pass draws the same noise whatever K is.
    assert plain.iw_nll is None and "IW-NLL" not in plain.summary()
    assert weighted.nelbo == plain.nelbo and weighted.kl_div == plain.kl_div
    assert f"IW-NLL (K=64) {weighted.iw_nll:.6f}" in weighted.summary()
    # The bound (mean over the 6 images, bits/dim) is finite and below the ELBO.
    assert np.isfinite(weighted.iw_nll) and weighted.iw_nll < weighted.nelbo
    assert weighted.iw_nll > 0.5 * weighted.nelbo  # the same order: in bits/dim, not nats
