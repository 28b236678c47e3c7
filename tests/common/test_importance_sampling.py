"""Issue 13 item 3: the importance-weighted NLL (efficient_vdvae_common.importance_sampling) and its use
by reconstruction in both frameworks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from efficient_vdvae_common.importance_sampling import importance_weighted_nll, sample_passes
from tests.helpers import FRAMEWORKS_JAX_SLOW

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")


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


RECONSTRUCT = {"torch": (_torch_reconstruct, "torch_run"), "jax": (_jax_reconstruct, "jax_run")}


@pytest.mark.parametrize("framework", FRAMEWORKS_JAX_SLOW)
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


# ---- The log weights themselves, against independent computations (randomly initialised models, whose
# KL is clearly non-zero: about 3 nats per image), in both distribution bases and both frameworks.

import math  # noqa: E402

from tests.conftest import REFERENCE_CONFIG  # noqa: E402
from tests.helpers import JAX_TINY_MODEL as TWO_LEVEL_16PX  # noqa: E402

IMAGES, SAMPLES, DIMS = 4, 64, 16 * 16 * 3
BASES = ["std", "logstd"]  # gradient_smoothing_beta is ln 2 in this config: a missing beta shows


def _config(base: str):
    return load_config(REFERENCE_CONFIG, overrides=TWO_LEVEL_16PX + (f"model.distribution_base='{base}'",))


def _images(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 16, 16, 3) random 8-bit images in model space [-1, 1]."""
    return ((rng.integers(0, 256, size=(count, 16, 16, 3)) - 127.5) / 127.5).astype(np.float32)


class TorchWeights:
    """importance_log_weights, and the same noise replayed through the model itself."""

    def __init__(self, base: str):
        import torch

        from efficient_vdvae_torch.model import UniversalAutoEncoder

        self.hp = _config(base)
        torch.manual_seed(0)
        self.model = UniversalAutoEncoder(self.hp).eval().requires_grad_(False)

    def log_weights(self, x: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        import torch

        from efficient_vdvae_torch.synthesis import importance_log_weights

        xt = torch.as_tensor(x).permute(0, 3, 1, 2)
        rows = len(x) * num_samples  # one pass: the replay below draws the same noise
        return importance_log_weights(self.hp, self.model, xt, num_samples, rows, torch.Generator().manual_seed(seed))

    def replay(self, x: np.ndarray, num_samples: int, seed: int):
        """Per row (image i's samples are rows i*K..i*K+K-1): the NELBO (nats) compute_loss reports, its
        reconstruction term, and numpy (eps, posterior (mean, std), prior (mean, std)) per group, NHWC."""
        import torch

        from efficient_vdvae_torch.model import compute_loss

        xr = torch.as_tensor(np.repeat(x, num_samples, axis=0)).permute(0, 3, 1, 2)
        # importance_log_weights draws standard normals from its generator, group by group, on the CPU.
        _, shapes, _ = self.model(xr[:1])
        generator = torch.Generator().manual_seed(seed)
        noise = [torch.randn((len(xr),) + tuple(stats[0].shape[1:]), generator=generator) for stats in shapes]
        logits, posterior, prior = self.model(xr, noise=noise)
        nelbo, recon = [], []
        for r in range(len(xr)):
            row = lambda stats: [(s[0][r:r + 1], s[1][r:r + 1]) for s in stats]  # noqa: E731
            loss = compute_loss(self.hp, xr[r:r + 1], logits[r:r + 1], row(posterior), row(prior), None)
            nelbo.append(float(loss.nelbo) * DIMS * math.log(2.0))
            recon.append(float(loss.recon_loss) * DIMS)
        nhwc = lambda t: t.permute(0, 2, 3, 1).double().numpy()  # noqa: E731
        groups = [(nhwc(eps), (nhwc(q[0]), nhwc(q[1])), (nhwc(p[0]), nhwc(p[1])))
                  for eps, q, p in zip(noise, posterior, prior)]
        return np.array(nelbo), np.array(recon), groups


class JaxWeights:
    """make_importance_step, and the same noise replayed through the model itself."""

    def __init__(self, base: str):
        import jax

        from efficient_vdvae_jax.model import UniversalAutoEncoder

        self.hp = _config(base)
        self.model = UniversalAutoEncoder(self.hp)
        self.params = self.model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]

    def log_weights(self, x: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        import jax

        from efficient_vdvae_jax.synthesis import make_importance_step

        xr = np.repeat(x, num_samples, axis=0)
        step = make_importance_step(self.hp, self.model, len(xr))
        return np.asarray(step(self.params, jax.random.PRNGKey(seed), xr), np.float64).reshape(len(x), num_samples)

    def replay(self, x: np.ndarray, num_samples: int, seed: int):
        import jax
        import jax.numpy as jnp

        from efficient_vdvae_jax.model import compute_loss

        xr = jnp.asarray(np.repeat(x, num_samples, axis=0))
        _, shapes, _ = self.model.apply({"params": self.params}, jax.random.PRNGKey(1), xr[:1])
        # make_importance_step splits its key into (model, noise) and the noise key into one per group.
        model_rng, noise_rng = jax.random.split(jax.random.PRNGKey(seed))
        noise = [jax.random.normal(key, (len(xr),) + stats[0].shape[1:], jnp.float32)
                 for key, stats in zip(jax.random.split(noise_rng, len(shapes)), shapes)]
        logits, posterior, prior = self.model.apply({"params": self.params}, model_rng, xr, noise=noise)

        def one_image(x1, logits1, post1, prior1):
            add_batch = lambda tree: jax.tree.map(lambda a: a[None], tree)  # noqa: E731
            loss = compute_loss(self.hp, x1[None], logits1[None], add_batch(post1), add_batch(prior1), None)
            return loss.nelbo * DIMS * math.log(2.0), loss.recon_loss * DIMS

        nelbo, recon = jax.vmap(one_image)(xr, logits, posterior, prior)
        f64 = lambda t: np.asarray(t, np.float64)  # noqa: E731
        groups = [(f64(eps), (f64(q[0]), f64(q[1])), (f64(p[0]), f64(p[1])))
                  for eps, q, p in zip(noise, posterior, prior)]
        return f64(nelbo), f64(recon), groups


WEIGHTS = {"torch": TorchWeights, "jax": JaxWeights}


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("framework", FRAMEWORKS_JAX_SLOW)
def test_monte_carlo_elbo_of_the_weights_matches_the_analytic_nelbo(framework, base):
    """-mean_k w_k estimates the NELBO that compute_loss reports (analytic KL). On the same noise the
    reconstruction terms cancel, so the difference is the Monte-Carlo KL error alone: within 4 standard
    errors, while the KL itself is many standard errors from zero (a dropped or sign-flipped
    log p(z) - log q(z|x), or a wrong std, would be far off)."""
    weights = WEIGHTS[framework](base)
    x = _images(np.random.default_rng(0), IMAGES)
    log_weights = weights.log_weights(x, SAMPLES, seed=1)
    assert log_weights.shape == (IMAGES, SAMPLES)
    nelbo, recon, _ = weights.replay(x, SAMPLES, seed=1)
    difference = -log_weights.reshape(-1) - nelbo
    standard_error = difference.std(ddof=1) / math.sqrt(difference.size)
    kl = np.mean(nelbo - recon)
    assert kl > 10 * standard_error  # the test has the power to see a missing KL term
    assert abs(difference.mean()) < 4 * standard_error, (difference.mean(), standard_error, kl)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_one_log_weight_equals_scipy(framework, base):
    """One image, one sample, fixed noise: log w = -nll + sum_g [log N(z; prior) - log N(z; posterior)]
    with z = mean_q + std_q * eps, from the returned stats (std: the stat itself in base 'std',
    exp(beta * logstd) in base 'logstd'), summed by scipy in float64."""
    weights = WEIGHTS[framework](base)
    x = _images(np.random.default_rng(2), 1)
    [[log_weight]] = weights.log_weights(x, 1, seed=3)
    _, recon, groups = weights.replay(x, 1, seed=3)
    beta = weights.hp.model.gradient_smoothing_beta
    to_std = (lambda raw: raw) if base == "std" else (lambda raw: np.exp(beta * raw))
    expected = -recon[0]
    for eps, (q_mean, q_raw), (p_mean, p_raw) in groups:
        z = q_mean + to_std(q_raw) * eps
        expected += norm.logpdf(z, p_mean, to_std(p_raw)).sum() - norm.logpdf(z, q_mean, to_std(q_raw)).sum()
    assert abs(expected - (-recon[0])) > 1.0  # the latent terms matter here
    np.testing.assert_allclose(log_weight, expected, rtol=1e-5, atol=1e-3)


# ---- Refusals: a non-finite bound is a broken model (issue 12 item 5), K > 1 with masks a config error.

def test_a_non_finite_bound_is_a_broken_model_naming_the_checkpoint():
    from efficient_vdvae_common.importance_sampling import batch_bound_sum
    from efficient_vdvae_common.model_health import BrokenModelError

    hp = _config("std")
    finite = np.array([[-3000.0, -3001.0], [-2000.0, -np.inf]])  # one zero weight: still a finite bound
    expected = -np.log(np.mean(np.exp(finite - finite.max(1, keepdims=True)), 1)) - finite.max(1)
    np.testing.assert_allclose(batch_bound_sum(finite, hp, "x", "ck"), expected.sum() / (DIMS * math.log(2.0)))
    for bad in (np.nan, np.inf, -np.inf):  # -inf: every weight of image 1 is zero
        log_weights = finite.copy()
        log_weights[1, 0] = bad
        with pytest.raises(BrokenModelError) as error:
            batch_bound_sum(log_weights, hp, "the importance weights of a.png", "checkpoints-tiny")
        message = str(error.value)
        assert message.startswith("checkpoint checkpoints-tiny gives non-finite values in the importance weights "
                                  "of a.png") and "\n" not in message


def _torch_synthesize(arguments):
    from efficient_vdvae_torch.synthesize import main

    return main(arguments)


def _jax_synthesize(arguments):
    from efficient_vdvae_jax.synthesize import main

    return main(arguments)


@pytest.mark.parametrize("main", [_torch_synthesize, _jax_synthesize], ids=["torch", "jax"])
def test_importance_samples_with_masked_reconstruction_fail_at_start_up(main, tmp_path, monkeypatch, capsys):
    """A cross-key error of hparams (exit 2 naming both keys) before any checkpoint is looked for."""
    monkeypatch.chdir(tmp_path)  # no run here: a late check would complain about the missing checkpoint
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(REFERENCE_CONFIG), "--set", "run.name=nothing_here",
              "synthesis.num_importance_samples=8", "synthesis.mask_reconstruction=True"])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "[synthesis] num_importance_samples = 8" in line and "synthesis.mask_reconstruction = False" in line
    assert list(tmp_path.iterdir()) == []
