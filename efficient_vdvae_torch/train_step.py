"""One training update and one evaluation step, as SPEC.md section 6 states them."""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
from torch import nn

from efficient_vdvae_common.objective import LossOutput
from efficient_vdvae_torch.model import compute_loss
from efficient_vdvae_torch.model.losses import count_active_groups

__all__ = ["train_step", "eval_step", "update_ema", "update_is_applied"]


def train_step(hp, model: nn.Module, ema_model: nn.Module, optimizer: torch.optim.Optimizer,
               lr_schedule: torch.optim.lr_scheduler.LRScheduler, x: torch.Tensor, step: int,
               noise: Sequence[torch.Tensor] | None = None) -> dict:
    """Forward, loss, backward, clip, skip or (step, LR step, EMA). `step`: updates applied so far.

    `noise`: the posterior eps of every latent group (the trainer's seeded draws), else the model's RNG.

    A skipped update (non-finite gradient norm, or norm >= gradient_skip_threshold)
    leaves parameters, optimiser state, LR schedule and EMA untouched; the caller
    counts `stats["skipped"]`.
    """
    model.train()
    learning_rate = optimizer.param_groups[0]["lr"]
    with _autocast(hp, x.device):
        logits, posterior_stats, prior_stats = model(x, noise=noise)
    out = compute_loss(hp, x, logits, posterior_stats, prior_stats, step)
    out.loss.backward()

    grad_norm = _clip_and_measure_gradients(hp, model)
    # The step's only device-to-host copy: the skip decision needs the norm on
    # the host, and the logged numbers travel with it.
    stats = _stats(hp, out, logits, grad_norm)
    applied = update_is_applied(hp, stats["grad_norm"])  # judged on the norm before clipping
    if applied:
        optimizer.step()
        lr_schedule.step()
        update_ema(ema_model, model, hp.train.ema_decay)
    optimizer.zero_grad(set_to_none=True)

    stats.update(skipped=not applied, learning_rate=learning_rate)
    return stats


@torch.no_grad()
def eval_step(hp, model: nn.Module, x: torch.Tensor, noise: Sequence[torch.Tensor] | None = None) -> dict:
    """The evaluation objective (beta 1, no gamma balancing) on one batch; `noise` as in train_step."""
    model.eval()
    with _autocast(hp, x.device):
        logits, posterior_stats, prior_stats = model(x, noise=noise)
    return _stats(hp, compute_loss(hp, x, logits, posterior_stats, prior_stats, step=None), logits)


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * param, for every parameter."""
    ema_params = list(ema_model.parameters())
    params = list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"update_ema: the EMA model has {len(ema_params)} parameters, the model {len(params)}")
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


def _autocast(hp, device: torch.device):
    # bf16 on every device, as in JAX, so the switch means the same in both
    # frameworks and is testable on the CPU (where it is rarely faster).
    # The loss is computed outside, in float32.
    if hp.run.mixed_precision:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clip_and_measure_gradients(hp, model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (before clipping, on their device), clipping them if configured."""
    params = [p for p in model.parameters() if p.grad is not None]
    if hp.optimizer.clip_gradient_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm=hp.optimizer.gradient_clip_norm_value, foreach=True)
    return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)


def update_is_applied(hp, grad_norm: float) -> bool:
    """False when `optimizer.gradient_skip` and the norm is NaN/inf or >= `gradient_skip_threshold`."""
    if not hp.optimizer.gradient_skip:
        return True
    return math.isfinite(grad_norm) and grad_norm < hp.optimizer.gradient_skip_threshold


def _stats(hp, out: LossOutput, logits: torch.Tensor, grad_norm: torch.Tensor | None = None) -> dict:
    # One device-to-host copy for every number the logger needs, not one per value.
    scalars = [out.loss, out.recon_loss, out.recon_report, out.kl_div, out.nelbo]
    if grad_norm is not None:
        scalars.append(grad_norm)
    n_scalars, n_groups = len(scalars), out.kl_per_group.numel()
    host = torch.cat([torch.stack([s.float() for s in scalars]), out.kl_per_group.float(),
                      out.avg_kl_per_group.float()]).detach().cpu()
    loss, recon_loss, recon_report, kl_div, nelbo, *norm = host[:n_scalars].tolist()
    avg_kl = host[n_scalars + n_groups:]
    extra = {"grad_norm": norm[0]} if norm else {}
    return {
        "loss": loss,
        "recon_loss": recon_loss,
        "recon_report": recon_report,
        "kl_div": kl_div,
        "nelbo": nelbo,
        "beta": out.beta,
        "kl_per_group": host[n_scalars:n_scalars + n_groups],
        "avg_kl_per_group": avg_kl,
        "active_groups": count_active_groups(avg_kl, hp.metrics.latent_active_threshold),
        "logits": logits.detach(),
        **extra,
    }
