"""Model behaviour: padding, inference modes, masks, generation, other data kinds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_torch.model.conv2d import Conv2d, same_padding
from tests.conftest import REFERENCE_DIR

NUM_GROUPS = 10


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(np.load(REFERENCE_DIR / "batch.npz")["input"][:2])


@pytest.fixture
def model(reference_config):
    torch.manual_seed(0)
    return UniversalAutoEncoder(reference_config).eval()


def test_same_padding_puts_the_odd_pixel_left_and_top():
    assert same_padding(3, 1) == (1, 1, 1, 1)
    assert same_padding((2, 4), 1) == (2, 1, 1, 0)
    assert same_padding((2, 4), 1, odd_pixel_first=False) == (1, 2, 0, 1)
    assert same_padding(4, 4) == (0, 0, 0, 0)


def test_cell_first_conv_pads_like_torch_same():
    """The original's first cell conv was nn.Conv2d(padding='same'): compare with that directly."""
    conv = Conv2d(2, 3, (2, 4), odd_pixel_first=False)
    x = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding="same"))


def test_strided_conv_pads_k_minus_s_odd_pixel_first():
    conv = Conv2d(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 6, 6)
    # k - s = 1: the original's rule pads one pixel at the top/left only.
    expected = F.conv2d(F.pad(x, (1, 0, 1, 0)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (1, 1, 3, 3)


def test_output_and_stats_shapes(model, images):
    with torch.no_grad():
        logits, posterior, prior = model(images)
    assert logits.shape == (2, 100, 32, 32)
    resolutions = [2, 8, 8, 8, 16, 16, 32, 32, 32, 32]
    assert [p[0].shape[-1] for p in posterior] == resolutions == [q[1].shape[-1] for q in prior]
    assert all(p[1].min() > 0 for p in posterior)


def test_zero_posterior_temperature_is_deterministic_and_equals_zero_noise(model, images):
    with torch.no_grad():
        a = model(images, posterior_temperature=0.0)[0]
        b = model(images, posterior_temperature=0.0)[0]
        zeros = [torch.zeros_like(p[0]) for p in model(images)[1]]
        c = model(images, noise=zeros)[0]
        d = model(images)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)


def test_all_ones_masks_change_nothing(model, images):
    noise = [torch.randn_like(p[0]) for p in model(images)[1]]
    with torch.no_grad():
        plain = model(images, noise=noise)[0]
        masked = model(images, variate_masks=[np.ones(8)] * NUM_GROUPS, noise=noise)[0]
    torch.testing.assert_close(plain, masked)


def test_all_zero_masks_give_a_prior_sample(model, images):
    """Every variate off: the decoder ignores the image and follows the prior, as generation does."""
    masks = [np.zeros(8)] * NUM_GROUPS
    outputs = []
    for x in (images, -images):
        torch.manual_seed(3)
        with torch.no_grad():
            outputs.append(model(x, variate_masks=masks, posterior_temperature=0.0)[0])
    torch.manual_seed(3)
    generated, zs = model.sample_from_prior(2, [1.0] * 7)
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[0], generated)
    assert len(zs) == NUM_GROUPS


def test_mask_length_is_checked(model, images):
    with pytest.raises(ValueError, match="variate_masks"):
        model(images, variate_masks=[np.ones(8)] * 3)


def test_prior_temperatures_per_top_level_block(model):
    with torch.no_grad():
        cold_a = model.sample_from_prior(2, 0.0)[0]
        cold_b = model.sample_from_prior(2, [0.0] * 7)[0]
        warm = model.sample_from_prior(2, 1.0)[0]
    torch.testing.assert_close(cold_a, cold_b, rtol=0, atol=0)
    assert not torch.allclose(cold_a, warm)
    # Temperature 0 in block 0 only: its latents are the prior mean, the others are random.
    torch.manual_seed(0)
    zs = model.sample_from_prior(2, [0.0] + [1.0] * 6)[1]
    prior_mean = model.sample_from_prior(2, 0.0)[1][0]
    torch.testing.assert_close(zs[0], prior_mean)
    with pytest.raises(ValueError, match="temperatures"):
        model.sample_from_prior(2, [1.0] * 3)


def test_sampled_images_stay_in_range(model, images):
    with torch.no_grad():
        x = model.sample_output(model(images)[0])
    assert x.shape == images.shape and x.min() >= -1 and x.max() <= 1


def test_grayscale_custom_data(make_config):
    hp = make_config("data.dataset_source=custom", "data.channels=1")
    model = UniversalAutoEncoder(hp)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    logits, posterior, prior = model(x)
    assert logits.shape == (2, 10 * 4, 32, 32)
    out = compute_loss(hp, x, logits, posterior, prior, step=0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.bottom_up.input_conv.weight.grad is not None
    assert model.sample_output(logits.detach()).shape == (2, 1, 32, 32)


def test_binarized_mnist(make_config):
    hp = make_config("data.dataset_source=binarized_mnist", "data.channels=1")
    model = UniversalAutoEncoder(hp)
    x = (torch.rand(2, 1, 32, 32) < 0.3).float()
    logits = model(x)[0]
    assert logits.shape == (2, 1, 32, 32)
    sample = model.sample_output(logits)
    assert sample.shape == (2, 1, 28, 28) and set(sample.unique().tolist()) <= {0.0, 1.0}


def test_logstd_bases(make_config, images):
    hp = make_config("model.distribution_base=logstd", "model.output_distribution_base=logstd")
    model = UniversalAutoEncoder(hp)
    logits, posterior, prior = model(images)
    out = compute_loss(hp, images, logits, posterior, prior, step=0)
    assert torch.isfinite(out.loss) and (out.kl_per_group >= 0).all()


def test_gradient_checkpointing_gives_the_same_gradients(make_config, images):
    grads = []
    for flag in (False, True):
        hp = make_config(f"run.gradient_checkpointing={flag}")
        torch.manual_seed(0)
        model = UniversalAutoEncoder(hp)
        logits, posterior, prior = model(images, posterior_temperature=0.0)
        compute_loss(hp, images, logits, posterior, prior, step=0).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_meta_device_construction_creates_every_parameter(reference_config):
    with torch.device("meta"):
        model = UniversalAutoEncoder(reference_config)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.top_down.levels_down_upsample[1].unpool.scale_bias.shape == (1, 32, 8, 8)


def test_channels_last_gives_the_same_outputs(model, images):
    with torch.no_grad():
        expected = model(images, posterior_temperature=0.0)[0]
        model = model.to(memory_format=torch.channels_last)
        logits = model(images.contiguous(memory_format=torch.channels_last), posterior_temperature=0.0)[0]
    torch.testing.assert_close(logits, expected)
