"""The original PyTorch code's outputs (tests/fixtures/original_torch_small) reproduced in JAX via the converter."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.convert_checkpoint import mol_channel_permutation
from efficient_vdvae_jax.model import UniversalAutoEncoder
from tests.jax.helpers import max_relative_error, nchw_to_nhwc

N_GROUPS = 10
# (expected.json section, expected_tensors.npz prefix, posterior temperature)
MODES = [("sampled_noise", "tensors", 1.0), ("zero_noise", "tensors_zero_noise", 0.0)]


@pytest.fixture(scope="module")
def reference_outputs(reference_forward, reference_params, reference_batch):
    x = jnp.asarray(nchw_to_nhwc(reference_batch["input"]))
    noise = [jnp.asarray(nchw_to_nhwc(reference_batch[f"eps_{g:02d}"])) for g in range(N_GROUPS)]
    return {mode: reference_forward(reference_params, x, noise, temperature, 0)
            for mode, _, temperature in MODES}


@pytest.mark.parametrize("mode, prefix, temperature", MODES)
def test_logits_and_stats_match_original(reference_outputs, reference_expected, reference_hp,
                                         mode, prefix, temperature):
    _, tensors = reference_expected
    logits, posterior, prior, _ = reference_outputs[mode]
    torch_logits = nchw_to_nhwc(tensors[f"{prefix}.logits"])[..., mol_channel_permutation(reference_hp)]
    assert max_relative_error(logits, torch_logits) < 1e-4
    assert len(posterior) == len(prior) == N_GROUPS
    for g in range(N_GROUPS):
        for i, name in enumerate(("mean", "std")):
            assert max_relative_error(posterior[g][i], nchw_to_nhwc(tensors[f"{prefix}.posterior_{g:02d}.{name}"])) < 1e-4
            assert max_relative_error(prior[g][i], nchw_to_nhwc(tensors[f"{prefix}.prior_{g:02d}.{name}"])) < 1e-4


@pytest.mark.parametrize("mode", [m[0] for m in MODES])
def test_losses_match_original(reference_outputs, reference_expected, mode):
    scalars, _ = reference_expected
    expected = scalars[mode]
    out = reference_outputs[mode][3]
    assert max_relative_error(out.recon_loss, expected["recon_loss_nats_per_dim"]) < 1e-5
    assert max_relative_error(out.loss, expected["total_generator_loss(step_n)"]) < 1e-5
    assert max_relative_error(out.nelbo, expected["nelbo_bits_per_dim"]) < 1e-5
    # The KL terms are tiny; float32 sums of ~1e4 terms agree to a few 1e-7 relative.
    np.testing.assert_allclose(out.kl_per_group, expected["kl_per_layer_nats_per_dim"], rtol=1e-5)
    np.testing.assert_allclose(out.avg_kl_per_group, expected["kl_per_layer_avg_bits_per_latent_dim"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_div, expected["kl_total_bits_per_dim"], rtol=1e-5)


@pytest.mark.parametrize("step", ["4000", "1000000000"])
def test_loss_at_later_steps_matches_original(reference_forward, reference_params, reference_batch,
                                              reference_expected, step):
    """Steps where beta and gamma balancing weigh the KL visibly (at step 0 it is below float32 resolution)."""
    scalars, _ = reference_expected
    x = jnp.asarray(nchw_to_nhwc(reference_batch["input"]))
    noise = [jnp.zeros_like(jnp.asarray(nchw_to_nhwc(reference_batch[f"eps_{g:02d}"]))) for g in range(N_GROUPS)]
    out = reference_forward(reference_params, x, noise, 0.0, int(step))[3]
    expected = scalars["zero_noise_at_other_steps"][step]["total_generator_loss(step_n)"]
    assert max_relative_error(out.loss, expected) < 1e-5


def test_init_creates_exactly_the_original_parameters(reference_hp, reference_params, reference_expected):
    """Our model's own parameter tree has the converted original weights' names and shapes."""
    model = UniversalAutoEncoder(reference_hp)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(jnp.shape, reference_params)
    n_params = sum(np.size(leaf) for leaf in jax.tree.leaves(shapes))
    assert n_params == reference_expected[0]["sampled_noise"]["total_params"]
