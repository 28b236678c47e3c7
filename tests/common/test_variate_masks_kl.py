"""Issue 9 item 2: in masked reconstruction the KL of pruned variates is zero, in both frameworks.

A pruned variate is drawn from the prior, so its KL term is zero: the masks
multiply the per-variate KL before it is summed (SPEC section 8). Checked on a
tiny randomly initialised model against a numpy closed-form Gaussian KL over
the kept variates only.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import TWO_LEVEL_MODEL
from tests.jax.helpers import load_reference_config

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

HP_OVERRIDES = ("data.target_res=8",) + TWO_LEVEL_MODEL  # 3 latent groups of 4 variates
NUM_GROUPS, NUM_VARIATES, BATCH = 3, 4, 3
# Group 0 keeps two variates, group 1 none, group 2 all of them.
MASKS = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=np.float32)


def _torch_forward(hp, x_nhwc: np.ndarray, masks):
    """(loss output, posterior stats, prior stats) as numpy NHWC, with fixed posterior noise."""
    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss

    torch.manual_seed(0)
    model = UniversalAutoEncoder(hp).eval()
    x = torch.as_tensor(x_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        _, posterior, _ = model(x)
        noise = [torch.randn(generator=torch.Generator().manual_seed(g), size=p[0].shape)
                 for g, p in enumerate(posterior)]
        mask_list = None if masks is None else [torch.as_tensor(m) for m in masks]
        logits, posterior, prior = model(x, variate_masks=mask_list, noise=noise)
        loss = compute_loss(hp, x, logits, posterior, prior, step=None, variate_masks=mask_list)
    to_nhwc = lambda stats: [tuple(t.permute(0, 2, 3, 1).numpy() for t in pair) for pair in stats]  # noqa: E731
    return loss, to_nhwc(posterior), to_nhwc(prior)


def _jax_forward(hp, x_nhwc: np.ndarray, masks):
    import jax
    import jax.numpy as jnp

    from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss

    model = UniversalAutoEncoder(hp)
    x = jnp.asarray(x_nhwc)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    mask_list = None if masks is None else [jnp.asarray(m) for m in masks]
    logits, posterior, prior = model.apply({"params": params}, jax.random.PRNGKey(1), x, variate_masks=mask_list)
    loss = compute_loss(hp, x, logits, posterior, prior, None, variate_masks=mask_list)
    to_numpy = lambda stats: [tuple(np.asarray(t) for t in pair) for pair in stats]  # noqa: E731
    return loss, to_numpy(posterior), to_numpy(prior)


FORWARDS = {"torch": _torch_forward, "jax": _jax_forward}


def _std(hp, raw: np.ndarray) -> np.ndarray:
    raw = raw.astype(np.float64)
    return raw if hp.model.distribution_base == "std" else np.exp(hp.model.gradient_smoothing_beta * raw)


def numpy_gaussian_kl(hp, posterior, prior) -> np.ndarray:
    """KL(N(m_q, s_q) || N(m_p, s_p)) elementwise, the textbook closed form in float64."""
    m_q, s_q = posterior[0].astype(np.float64), _std(hp, posterior[1])
    m_p, s_p = prior[0].astype(np.float64), _std(hp, prior[1])
    return np.log(s_p / s_q) + (s_q ** 2 + (m_q - m_p) ** 2) / (2.0 * s_p ** 2) - 0.5


@pytest.fixture(scope="module")
def hp():
    return load_reference_config(*HP_OVERRIDES)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1.0, 1.0, size=(BATCH, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_all_masks_on_equals_the_unmasked_nelbo(framework, hp, images):
    unmasked, _, _ = FORWARDS[framework](hp, images, None)
    masked, _, _ = FORWARDS[framework](hp, images, np.ones((NUM_GROUPS, NUM_VARIATES), np.float32))
    assert float(masked.nelbo) == float(unmasked.nelbo)
    assert float(masked.kl_div) == float(unmasked.kl_div) > 0.0


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_masked_kl_sums_the_kept_variates_only(framework, hp, images):
    loss, posterior, prior = FORWARDS[framework](hp, images, MASKS)
    dims = 8 * 8 * 3
    kept = [numpy_gaussian_kl(hp, q, p) * mask for q, p, mask in zip(posterior, prior, MASKS)]  # NHWC * (variates,)
    expected_per_group = np.array([kl.sum() for kl in kept]) / (BATCH * dims)
    np.testing.assert_allclose(np.asarray(loss.kl_per_group), expected_per_group, rtol=1e-5, atol=1e-9)
    assert float(loss.kl_per_group[1]) == 0.0  # every variate of group 1 pruned
    np.testing.assert_allclose(float(loss.kl_div), expected_per_group.sum() / math.log(2.0), rtol=1e-5)
    # The pruned variates did carry KL: without the masks the sum is larger.
    everything = sum(numpy_gaussian_kl(hp, q, p).sum() for q, p in zip(posterior, prior)) / (BATCH * dims)
    assert everything > expected_per_group.sum() * 1.01
    np.testing.assert_allclose(float(loss.nelbo), float(loss.recon_report) + float(loss.kl_div), rtol=1e-6)
