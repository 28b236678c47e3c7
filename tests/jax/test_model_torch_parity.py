"""Cross-framework parity: our PyTorch model's weights, converted, give the same numbers in JAX.

Three configurations (the small reference one; 'logstd' bases with the residual
distribution and k x k edge convs; non-uniform widths, variates and several blocks
per resolution). Zero-noise and injected-noise forward passes, every group's
stats, the KLs, the loss and its gradients agree to float32 precision.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from efficient_vdvae_jax.convert_checkpoint import (flax_params_to_torch_state_dict, mol_channel_permutation,
                                                    torch_state_dict_to_flax_params)
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
from efficient_vdvae_torch.model import compute_loss as torch_compute_loss
from tests.jax.helpers import TINY_OVERRIDES, load_reference_config, max_relative_error, nchw_to_nhwc

CONFIGS = {
    "reference": (),
    "logstd_residual_kxk": TINY_OVERRIDES + (
        "model.distribution_base='logstd'", "model.output_distribution_base='logstd'",
        "model.use_residual_distribution=True", "model.use_1x1_conv=False",
        "model.input_kernel_size=(3, 3)", "model.output_kernel_size=(3, 3)",
        "optimizer.learning_rate_scheme='constant'"),
    "nonuniform_multiblock": (
        "data.target_res=16", "model.input_conv_filters=8",
        "model.up_strides=[1, 2, 2]", "model.up_n_blocks_per_res=[2, 1, 0]", "model.up_n_blocks=[1, 2, 1]",
        "model.up_n_layers=[1, 2, 1]", "model.up_filters=[8, 16, 24]",
        "model.up_mid_filters_ratio=[0.5, 0.25, 0.5]", "model.up_kernel_size=[3, 3, 1]",
        "model.up_skip_filters=[16, 16, 24]",
        "model.down_strides=[2, 2, 1]", "model.down_n_blocks_per_res=[1, 2, 0]", "model.down_n_blocks=[2, 1, 1]",
        "model.down_n_layers=[1, 2, 1]", "model.down_filters=[24, 16, 16]",
        "model.down_mid_filters_ratio=[0.5, 0.25, 0.5]", "model.down_kernel_size=[3, 1, 3]",
        "model.down_latent_variates=[4, 6, 5]", "model.num_output_mixtures=3", "model.stable_init=False",
        "loss.scaled_gamma=False"),
}
STEP = 4000  # beta ~0.8 and gamma balancing on: both KL paths weigh in the loss
TOL = 1e-4


class Case:
    """One configuration: a perturbed random torch model, its converted JAX params, a batch, torch results."""

    def __init__(self, name: str):
        self.hp = load_reference_config(*CONFIGS[name])
        torch.manual_seed(0)
        self.torch_model = TorchAutoEncoder(self.hp)
        with torch.no_grad():  # nothing left at zero: biases, scale_bias and h all matter
            for p in self.torch_model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        self.state_dict = {k: v.detach().clone() for k, v in self.torch_model.state_dict().items()}
        self.params = jax.tree.map(jnp.asarray, torch_state_dict_to_flax_params(self.hp, self.state_dict))
        res, c = self.hp.data.target_res, self.hp.data.channels
        gen = torch.Generator().manual_seed(1)
        pixels = torch.randint(0, 256, (2, c, res, res), generator=gen).float()
        pixels[0, :, 0, :2] = torch.tensor([0.0, 255.0])  # both edge cases of the likelihood
        self.x = (pixels - 127.5) / 127.5
        self.jax_x = jnp.asarray(nchw_to_nhwc(self.x))
        with torch.no_grad():
            _, posterior, _ = self.torch_model(self.x, posterior_temperature=0.0)
        self.latent_shapes = [tuple(mean.shape) for mean, _ in posterior]  # NCHW
        # JAX always gets a noise list (zeros when unused) so that one compile serves both modes.
        self.zero_noise = [jnp.zeros(nchw_to_nhwc(np.empty(s)).shape) for s in self.latent_shapes]


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    return Case(request.param)


def torch_forward(case: Case, temperature: float, noise=None, with_grads=False):
    model = case.torch_model
    model.zero_grad()
    logits, posterior, prior = model(case.x, posterior_temperature=temperature, noise=noise)
    out = torch_compute_loss(case.hp, case.x, logits, posterior, prior, step=STEP)
    grads = None
    if with_grads:
        out.loss.backward()
        # A parameter without a consumer (the last bottom-up pool) has no torch grad: zero in JAX.
        grads = {k: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                 for k, p in model.named_parameters()}
    return logits.detach(), posterior, prior, out, grads


def jax_loss(hp, model):
    def loss(params, x, temperature, noise):
        logits, posterior, prior = model.apply({"params": params}, jax.random.PRNGKey(0), x,
                                               posterior_temperature=temperature, noise=noise)
        out = compute_loss(hp, x, logits, posterior, prior, STEP)
        return out.loss, (logits, posterior, prior, out)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.fixture(scope="module")
def jax_value_and_grad(case):
    return jax_loss(case.hp, UniversalAutoEncoder(case.hp))


def assert_outputs_match(case: Case, torch_results, jax_results):
    logits, posterior, prior, out, _ = torch_results
    (_, (j_logits, j_posterior, j_prior, j_out)), _ = jax_results
    expected_logits = nchw_to_nhwc(logits.numpy())[..., mol_channel_permutation(case.hp)]
    assert max_relative_error(j_logits, expected_logits) < TOL
    for g, (tp, jp, tq, jq) in enumerate(zip(posterior, j_posterior, prior, j_prior, strict=True)):
        for i in range(2):
            assert max_relative_error(jp[i], nchw_to_nhwc(tp[i].detach().numpy())) < TOL, (g, "posterior", i)
            assert max_relative_error(jq[i], nchw_to_nhwc(tq[i].detach().numpy())) < TOL, (g, "prior", i)
    np.testing.assert_allclose(j_out.kl_per_group, out.kl_per_group.detach().numpy(), rtol=TOL)
    np.testing.assert_allclose(j_out.avg_kl_per_group, out.avg_kl_per_group.detach().numpy(), rtol=TOL)
    for field in ("loss", "recon_loss", "kl_div", "nelbo"):
        assert max_relative_error(getattr(j_out, field), getattr(out, field).detach().numpy()) < 1e-5, field


def test_zero_noise_outputs_loss_and_gradients_match_torch(case, jax_value_and_grad):
    torch_results = torch_forward(case, 0.0, with_grads=True)
    jax_results = jax_value_and_grad(case.params, case.jax_x, 0.0, case.zero_noise)
    assert_outputs_match(case, torch_results, jax_results)

    torch_grads = torch_state_dict_to_flax_params(case.hp, torch_results[4])
    _, jax_grads = jax_results
    flat_torch = dict(jax.tree_util.tree_leaves_with_path(torch_grads))
    flat_jax = dict(jax.tree_util.tree_leaves_with_path(jax_grads))
    assert flat_torch.keys() == flat_jax.keys()
    for path, expected in flat_torch.items():
        assert max_relative_error(flat_jax[path], expected) < TOL, jax.tree_util.keystr(path)


def test_injected_noise_outputs_match_torch(case, jax_value_and_grad):
    gen = torch.Generator().manual_seed(2)
    noise = [torch.randn(shape, generator=gen) for shape in case.latent_shapes]
    with torch.no_grad():
        torch_results = torch_forward(case, 1.0, noise=noise)
    jax_noise = [jnp.asarray(nchw_to_nhwc(n.numpy())) for n in noise]
    assert_outputs_match(case, torch_results, jax_value_and_grad(case.params, case.jax_x, 1.0, jax_noise))


def test_round_trip_torch_jax_torch_is_exact(case):
    back = flax_params_to_torch_state_dict(case.hp, case.params)
    assert back.keys() == case.state_dict.keys()
    for key, value in case.state_dict.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    reloaded = TorchAutoEncoder(case.hp)
    reloaded.load_state_dict({k: torch.tensor(v) for k, v in back.items()}, strict=True)


def test_prior_samples_match_torch():
    """Generation with per-level temperatures and injected noise (tiny logstd config)."""
    case = Case("logstd_residual_kxk")
    temperatures = [0.7, 1.1]
    gen = torch.Generator().manual_seed(3)
    noise = [torch.randn(shape, generator=gen) for shape in case.latent_shapes]
    with torch.no_grad():
        logits, zs = case.torch_model.sample_from_prior(2, temperatures, noise=noise)
    model = UniversalAutoEncoder(case.hp)
    j_logits, j_zs = jax.jit(model.apply, static_argnames=("batch_size", "method"))(
        {"params": case.params}, jax.random.PRNGKey(0), batch_size=2, temperatures=temperatures,
        noise=[jnp.asarray(nchw_to_nhwc(n.numpy())) for n in noise], method=model.sample_from_prior)
    assert max_relative_error(j_logits, nchw_to_nhwc(logits.numpy())[..., mol_channel_permutation(case.hp)]) < TOL
    for z, jz in zip(zs, j_zs, strict=True):
        assert max_relative_error(jz, nchw_to_nhwc(z.numpy())) < TOL
