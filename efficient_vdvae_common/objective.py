"""The objective's framework-free parts (SPEC.md section 5): its terms and the Gaussian KL formula.

Both frameworks' model/losses.py fill `LossOutput` and call `gaussian_kl`
with their own array namespace (`torch` or `jax.numpy`), so the formula
is written once.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple


class LossOutput(NamedTuple):
    """Terms of the objective (torch tensors or JAX arrays; a NamedTuple is a pytree jit can return).
    "Report units" are bits/dim, or nats per image for binarized_mnist."""

    loss: Any  # optimised: recon_loss + beta * (balanced) KL, nats/dim
    recon_loss: Any  # nats/dim
    kl_per_group: Any  # (L,) nats per image dim
    avg_kl_per_group: Any  # (L,) bits per latent dim
    kl_div: Any  # sum of kl_per_group, report units
    recon_report: Any  # recon_loss in report units
    nelbo: Any  # recon_report + kl_div, report units
    beta: Any  # the KL weight (kl_beta), 1 in evaluation


def gaussian_kl(posterior: tuple[Any, Any], prior: tuple[Any, Any], base: str, smoothing_beta: float,
                xp: ModuleType) -> Any:
    """Elementwise KL(posterior || prior) of diagonal Gaussians given as (mean, std) or (mean, logstd)
    (`base`), computed with the array namespace `xp` (torch or jax.numpy)."""
    if base == "std":
        inv_prior_std = 1.0 / prior[1]
        ratio = posterior[1] * inv_prior_std
    else:
        inv_prior_std = xp.exp(-smoothing_beta * prior[1])
        ratio = xp.exp(smoothing_beta * posterior[1]) * inv_prior_std
    delta = (posterior[0] - prior[0]) * inv_prior_std
    return 0.5 * (delta * delta + ratio * ratio) - 0.5 - xp.log(ratio)
