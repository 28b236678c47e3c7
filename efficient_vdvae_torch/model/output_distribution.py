"""Output likelihoods and their samplers (SPEC.md section 5).

Discretized mixture of logistics for RGB and single-channel images, and a
Bernoulli for binarized MNIST, with the distributions' mean images
(`output_mean`, for synthesis.output_sampling = 'mean'). Logit layout of the mixture (the PyTorch
original's): channels [0, M) are the mixture logits; the rest reshape to
(C, 3M) with means, raw scales and raw coefficients per colour channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from efficient_vdvae_common.architecture import MNIST_CROP
from efficient_vdvae_common.output_distribution import OutputDistribution
from hparams.schema import OUTPUT_SAMPLINGS, unknown_choice
from efficient_vdvae_torch.model.latent_layers import beta_softplus

# Uniform draws stay away from 0 and 1 so that the logs below stay finite.
UNIFORM_MARGIN = 1e-5


def split_mol_logits(logits: torch.Tensor, dist: OutputDistribution
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixture logits (B,M,H,W), means, raw scales, coefficients (each B,C,M,H,W))."""
    b, _, h, w = logits.shape
    m, c = dist.num_mixtures, dist.channels
    params = logits[:, m:].reshape(b, c, 3 * m, h, w)
    return logits[:, :m], params[:, :, :m], params[:, :, m:2 * m], torch.tanh(params[:, :, 2 * m:])


def _std_base_scales(raw: torch.Tensor, dist: OutputDistribution) -> torch.Tensor:
    floor = torch.tensor(math.exp(dist.min_log_scale), dtype=raw.dtype, device=raw.device)
    return torch.maximum(beta_softplus(raw, dist.smoothing_beta), floor)


def mol_log_scales(raw: torch.Tensor, dist: OutputDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse scale, log scale) of the logistics, floored at exp(min_mol_logscale)."""
    if dist.base == "std":
        scales = _std_base_scales(raw, dist)
        return 1.0 / scales, torch.log(scales)
    log_scales = torch.clamp(raw, min=dist.min_log_scale)
    return torch.exp(-dist.smoothing_beta * log_scales), log_scales


def mol_scales(raw: torch.Tensor, dist: OutputDistribution) -> torch.Tensor:
    """The logistics' scales, floored at exp(min_mol_logscale)."""
    if dist.base == "std":
        return _std_base_scales(raw, dist)
    return torch.exp(dist.smoothing_beta * torch.clamp(raw, min=dist.min_log_scale))


def _coefficient_slot(channel: int, source: int) -> int:
    # Channel c depends on every earlier channel k; coefficient blocks are
    # stored in the order (g<-r), (b<-r), (b<-g): slot = c(c-1)/2 + k.
    return channel * (channel - 1) // 2 + source


def mol_log_prob(targets: torch.Tensor, logits: torch.Tensor, dist: OutputDistribution) -> torch.Tensor:
    """Log-likelihood of each pixel (B, H, W), summed over channels, mixed over components."""
    min_pix, max_pix = dist.pixel_range
    mixture_logits, means, raw_scales, coeffs = split_mol_logits(logits, dist)
    inv_scales, log_scales = mol_log_scales(raw_scales, dist)
    t = targets.unsqueeze(2)  # B, C, 1, H, W

    # Autoregressive means: each channel is shifted by the earlier channels' targets.
    shifted = [means[:, 0]]
    for c in range(1, dist.channels):
        shifted.append(means[:, c] + sum(coeffs[:, _coefficient_slot(c, k)] * t[:, k] for k in range(c)))
    centered = t - torch.stack(shifted, dim=1)

    half_bin = 1.0 / dist.num_classes
    plus = inv_scales * (centered + half_bin)
    minus = inv_scales * (centered - half_bin)
    log_cdf_plus = plus - F.softplus(plus)  # bin of the lowest value
    log_one_minus_cdf_minus = -F.softplus(minus)  # bin of the highest value
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_scales * centered
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)  # for bins too sharp to difference

    t = t.expand_as(centered)
    log_probs = torch.where(
        t == min_pix, log_cdf_plus,
        torch.where(t == max_pix, log_one_minus_cdf_minus,
                    torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                log_pdf_mid - math.log(dist.num_classes / 2))))
    return torch.logsumexp(log_probs.sum(dim=1) + F.log_softmax(mixture_logits, dim=1), dim=1)


def bernoulli_log_prob(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of each pixel of the 28x28 centre crop (B, 1, 28, 28)."""
    t, l = targets[:, :, MNIST_CROP, MNIST_CROP], logits[:, :, MNIST_CROP, MNIST_CROP]
    # t*log(sigmoid(l)) + (1-t)*log(1-sigmoid(l)), in a stable form.
    return -F.binary_cross_entropy_with_logits(l, t, reduction="none")


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return u * (1.0 - 2 * UNIFORM_MARGIN) + UNIFORM_MARGIN


def sample_mol(logits: torch.Tensor, dist: OutputDistribution, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, C, H, W) in [min_pix, max_pix] drawn from the mixture, unrounded."""
    min_pix, max_pix = dist.pixel_range
    mixture_logits, means, raw_scales, coeffs = split_mol_logits(logits, dist)
    scales = mol_scales(raw_scales, dist)

    gumbel = -torch.log(-torch.log(_uniform(mixture_logits.shape, logits, generator)))
    component = torch.argmax(mixture_logits / temperature + gumbel, dim=1)  # B, H, W
    one_hot = F.one_hot(component, dist.num_mixtures).permute(0, 3, 1, 2).unsqueeze(1).to(logits.dtype)
    mean = (means * one_hot).sum(dim=2)  # B, C, H, W
    scale = (scales * one_hot).sum(dim=2)
    coeff = (coeffs * one_hot).sum(dim=2)

    u = _uniform(mean.shape, logits, generator)
    x = mean + scale * temperature * (torch.log(u) - torch.log(1.0 - u))
    channels: list[torch.Tensor] = []
    for c in range(dist.channels):
        value = x[:, c] + sum(coeff[:, _coefficient_slot(c, k)] * channels[k] for k in range(c))
        channels.append(torch.clamp(value, min_pix, max_pix))
    return torch.stack(channels, dim=1)


def sample_bernoulli(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary images (B, 1, 28, 28) with p = sigmoid(logits) on the centre crop."""
    probs = torch.sigmoid(logits[:, :, MNIST_CROP, MNIST_CROP])
    return torch.bernoulli(probs, generator=generator)


def sample_output(logits: torch.Tensor, dist: OutputDistribution, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw images from the output distribution given by `logits`."""
    if dist.bernoulli:
        return sample_bernoulli(logits, generator)
    return sample_mol(logits, dist, temperature, generator)


def mol_mean(logits: torch.Tensor, dist: OutputDistribution) -> torch.Tensor:
    """The mixture's mean image (B, C, H, W) in [min_pix, max_pix] (SPEC.md section 5).

    Each component's location for channel c is its mean plus the coefficients
    times the earlier channels' locations of the same component, clipped to
    the pixel range (the sampler with the logistic noise at its mean, 0); the
    image is the mixture-weighted (softmax of the mixture logits) sum of the
    locations. Clipping each component, as the pixel values are, keeps an
    unlikely component with a far-off location from dragging the mean.
    """
    min_pix, max_pix = dist.pixel_range
    mixture_logits, means, _, coeffs = split_mol_logits(logits, dist)
    weights = torch.softmax(mixture_logits, dim=1)  # B, M, H, W
    locations: list[torch.Tensor] = []
    for c in range(dist.channels):
        location = means[:, c] + sum(coeffs[:, _coefficient_slot(c, k)] * locations[k] for k in range(c))
        locations.append(torch.clamp(location, min_pix, max_pix))
    mean = (torch.stack(locations, dim=1) * weights.unsqueeze(1)).sum(dim=2)
    return torch.clamp(mean, min_pix, max_pix)


def bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """Pixel probabilities (B, 1, 28, 28), sigmoid(logits) on the centre crop."""
    return torch.sigmoid(logits[:, :, MNIST_CROP, MNIST_CROP])


def output_mean(logits: torch.Tensor, dist: OutputDistribution) -> torch.Tensor:
    """The mean image of the output distribution given by `logits` (no randomness, no temperature)."""
    if dist.bernoulli:
        return bernoulli_mean(logits)
    return mol_mean(logits, dist)


def render_output(logits: torch.Tensor, dist: OutputDistribution, sampling: str = "sample",
                  temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The images synthesis writes (synthesis.output_sampling): a sample at `temperature`, or the mean."""
    if sampling == "mean":
        return output_mean(logits, dist)
    if sampling != "sample":
        raise unknown_choice("synthesis.output_sampling", sampling, OUTPUT_SAMPLINGS)
    return sample_output(logits, dist, temperature, generator)
