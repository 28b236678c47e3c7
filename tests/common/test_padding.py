"""Odd "same" padding (issue 9 item 9): the PyTorch original's rule in both frameworks.

Even kernels at stride 1 need an odd total padding. The original's Conv2d puts the
extra pixel on the left/top; the first conv of each residual cell (a plain torch conv
with padding='same') puts it on the right/bottom. Checked against scipy's
correlate2d on explicitly padded inputs, and torch against JAX on a whole model.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import correlate2d

from efficient_vdvae_common.padding import same_padding_pairs
from tests.helpers import FRAMEWORKS



def reference_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, pads) -> np.ndarray:
    """x (C_in, H, W), kernel (C_out, C_in, kh, kw), pads ((top, bottom), (left, right)): scipy, float64."""
    padded = np.pad(x.astype(np.float64), ((0, 0),) + tuple(pads))
    return np.stack([sum(correlate2d(padded[c], kernel[o, c], mode="valid") for c in range(x.shape[0])) + bias[o]
                     for o in range(kernel.shape[0])])


def framework_conv(framework: str, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
                   odd_pixel_first: bool) -> np.ndarray:
    """Our conv of one image x (C_in, H, W) with the given weights, as (C_out, H, W)."""
    kh, kw = kernel.shape[2:]
    if framework == "torch":
        import torch

        from efficient_vdvae_torch.model.conv2d import Conv2d
        conv = Conv2d(kernel.shape[1], kernel.shape[0], (kh, kw), odd_pixel_first=odd_pixel_first)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel))
            conv.bias.copy_(torch.from_numpy(bias))
            return conv(torch.from_numpy(x)[None])[0].numpy()
    import jax.numpy as jnp

    from efficient_vdvae_jax.model.conv2d import conv2d
    conv = conv2d(kernel.shape[0], (kh, kw), odd_pixel_first=odd_pixel_first)
    params = {"params": {"kernel": jnp.asarray(kernel.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}}
    return np.asarray(conv.apply(params, jnp.asarray(x.transpose(1, 2, 0))[None]))[0].transpose(2, 0, 1)


def test_the_rule_puts_the_odd_pixel_first_unless_told_otherwise():
    assert same_padding_pairs(3, 1) == ((1, 1), (1, 1))
    assert same_padding_pairs((2, 4), 1) == ((1, 0), (2, 1))
    assert same_padding_pairs((2, 4), 1, odd_pixel_first=False) == ((0, 1), (1, 2))
    assert same_padding_pairs(4, 4) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="smaller than stride"):
        same_padding_pairs(1, 2)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kernel_size, odd_pixel_first, pads", [
    ((2, 2), True, ((1, 0), (1, 0))),      # the original's Conv2d: extra pixel left/top
    ((2, 4), True, ((1, 0), (2, 1))),
    ((4, 3), False, ((1, 2), (1, 1))),     # torch padding='same': extra pixel right/bottom
    ((3, 3), True, ((1, 1), (1, 1))),
])
def test_even_kernel_conv_equals_scipy_on_explicit_padding(framework, kernel_size, odd_pixel_first, pads):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6)).astype(np.float32)
    kernel = rng.normal(size=(3, 2) + kernel_size).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    out = framework_conv(framework, x, kernel, bias, odd_pixel_first)
    assert out.shape == (3, 5, 6)
    np.testing.assert_allclose(out, reference_conv(x, kernel, bias, pads), rtol=1e-5, atol=1e-5)


def test_a_one_by_two_kernel_sees_the_previous_pixel():
    """The smallest case, by hand: out[i] = 1 * x[i - 1] + 2 * x[i], zero before the left edge."""
    x = np.array([[[1.0, 10.0, 100.0]]], np.float32)
    out = framework_conv("torch", x, np.array([[[[1.0, 2.0]]]], np.float32), np.zeros(1, np.float32), True)
    np.testing.assert_array_equal(out, [[[2.0, 21.0, 210.0]]])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_residual_cell_pads_its_first_conv_last_and_the_others_first(framework):
    """A cell with k x k edge convs (use_1x1_conv False) and one middle conv, kernel (2, 2), computed by hand."""
    rng = np.random.default_rng(1)
    channels, mid = 4, 2
    x = rng.normal(size=(channels, 5, 5)).astype(np.float32)
    shapes = [(mid, channels), (mid, mid), (channels, mid)]
    kernels = [rng.normal(size=s + (2, 2)).astype(np.float32) * 0.5 for s in shapes]
    biases = [rng.normal(size=s[0]).astype(np.float32) * 0.1 for s in shapes]

    def silu(v):
        return v / (1.0 + np.exp(-v))

    first, after = ((0, 1), (0, 1)), ((1, 0), (1, 0))
    h = reference_conv(silu(x), kernels[0], biases[0], first)
    h = reference_conv(silu(h), kernels[1], biases[1], after)
    expected = x + reference_conv(silu(h), kernels[2], biases[2], after)

    if framework == "torch":
        import torch

        from efficient_vdvae_torch.model.layers import ResidualConvCell
        cell = ResidualConvCell(1, channels, 0.5, 2, init_scale=1.0, use_1x1_conv=False)
        with torch.no_grad():
            for conv, kernel, bias in zip(cell.convs[1::2], kernels, biases):
                conv.weight.copy_(torch.from_numpy(kernel))
                conv.bias.copy_(torch.from_numpy(bias))
            out = cell(torch.from_numpy(x)[None])[0].numpy()
    else:
        import jax.numpy as jnp

        from efficient_vdvae_jax.model.layers import ResidualConvCell
        cell = ResidualConvCell(1, channels, 0.5, 2, init_scale=1.0, residual=True, out_ratio=1.0,
                                use_1x1_conv=False)
        params = {name: {"kernel": jnp.asarray(k.transpose(2, 3, 1, 0)), "bias": jnp.asarray(b)}
                  for name, k, b in zip(("convs_1", "convs_3", "convs_5"), kernels, biases)}
        out = np.asarray(cell.apply({"params": params}, jnp.asarray(x.transpose(1, 2, 0))[None]))[0]
        out = out.transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


EVEN_KERNEL_MODEL = (
    "data.target_res=8", "model.input_conv_filters=8", "model.input_kernel_size=(2, 2)",
    "model.output_kernel_size=(2, 4)", "model.use_1x1_conv=False",
    "model.up_strides=[2, 2]", "model.up_n_blocks_per_res=[1, 0]", "model.up_n_blocks=[1, 1]",
    "model.up_n_layers=[1, 1]", "model.up_filters=[8, 8]", "model.up_mid_filters_ratio=[0.5, 0.5]",
    "model.up_kernel_size=[2, 4]", "model.up_skip_filters=[8, 8]",
    "model.down_strides=[2, 2]", "model.down_n_blocks_per_res=[1, 0]", "model.down_n_blocks=[1, 1]",
    "model.down_n_layers=[1, 1]", "model.down_filters=[8, 8]", "model.down_mid_filters_ratio=[0.5, 0.5]",
    "model.down_kernel_size=[(2, 4), 2]", "model.down_latent_variates=[4, 4]", "model.num_output_mixtures=2",
)


def test_even_kernel_model_torch_equals_jax(make_config):
    """The same (converted) weights give the same logits and KL in both frameworks with even kernels."""
    import jax
    import jax.numpy as jnp
    import torch

    from efficient_vdvae_jax.convert_checkpoint import mol_channel_permutation, torch_state_dict_to_flax_params
    from efficient_vdvae_jax.model import UniversalAutoEncoder as JaxAutoEncoder
    from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder

    hp = make_config(*EVEN_KERNEL_MODEL)
    torch.manual_seed(0)
    model = TorchAutoEncoder(hp)
    with torch.no_grad():  # nothing at zero, so that every pad position shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        logits, posterior, _ = model(x, posterior_temperature=0.0)
    params = torch_state_dict_to_flax_params(hp, model.state_dict())
    zero_noise = [jnp.zeros((2,) + tuple(mean.shape[2:]) + (mean.shape[1],)) for mean, _ in posterior]
    j_logits, j_posterior, _ = JaxAutoEncoder(hp).apply({"params": params}, jax.random.PRNGKey(0),
                                                       jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                                       posterior_temperature=0.0, noise=zero_noise)
    expected = logits.numpy().transpose(0, 2, 3, 1)[..., mol_channel_permutation(hp)]
    scale = np.max(np.abs(expected))
    assert np.max(np.abs(np.asarray(j_logits) - expected)) < 1e-4 * scale
    for (mean, _), (j_mean, _) in zip(posterior, j_posterior, strict=True):
        np.testing.assert_allclose(np.asarray(j_mean), mean.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
