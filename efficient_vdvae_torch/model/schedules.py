"""Step schedules: KL warm-up (beta), KL balancing (gamma), learning rate (SPEC.md sections 5, 6).

`step` is the number of optimiser updates applied before the current one.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from hparams.schema import LEARNING_RATE_SCHEMES, VARIATION_SCHEDULES, unknown_choice


def kl_beta(hp, step: int) -> float:
    """Weight of the KL term at `step`."""
    loss = hp.loss
    if loss.variation_schedule == "None":
        return 1.0
    if loss.variation_schedule == "Logistic":
        exponent = -loss.vae_beta_growth_rate * (step - loss.vae_beta_activation_steps)
        # Far before activation exp() overflows; the weight is 0 there.
        return 0.0 if exponent > 700 else 1.0 / (1.0 + math.exp(exponent))
    if loss.variation_schedule == "Linear":
        # The denominator is anneal_start + anneal_steps in both originals (SPEC.md section 5).
        ramp = (step - loss.vae_beta_anneal_start) / (loss.vae_beta_anneal_start + loss.vae_beta_anneal_steps)
        return min(max(ramp, loss.vae_beta_min), 1.0)
    raise unknown_choice("loss.variation_schedule", loss.variation_schedule, VARIATION_SCHEDULES)


def use_gamma(hp, step: int | None) -> bool:
    """Whether KL balancing applies at `step` (never in evaluation, step None)."""
    return step is not None and hp.loss.use_gamma_schedule and step <= hp.loss.gamma_max_steps


def gamma_weights(balance_terms: torch.Tensor) -> torch.Tensor:
    """alpha_g = L * a_g / sum(a), a constant of the objective (no gradient)."""
    a = balance_terms.detach()
    return a.numel() * a / a.sum()


def learning_rate(hp, step: int) -> float:
    """The closed-form learning rate after `step` updates."""
    opt = hp.optimizer
    lr, scheme = opt.learning_rate, opt.learning_rate_scheme
    if scheme == "constant":
        return lr * _warmup(step, opt.warmup_steps)
    if scheme == "cosine":
        if step < opt.decay_start:
            return lr * _warmup(step, opt.warmup_steps)
        floor = opt.min_learning_rate / lr
        progress = min(step - opt.decay_start, opt.decay_steps) / opt.decay_steps
        return lr * ((1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)) + floor)
    if scheme == "exponential":
        decayed = lr * opt.decay_rate ** ((step - opt.decay_start) / opt.decay_steps)
        return min(max(decayed, opt.min_learning_rate), lr)
    if scheme == "noam":
        if step == 0:
            return 0.0
        return lr * opt.warmup_steps ** 0.5 * min(step ** -0.5, step * opt.warmup_steps ** -1.5)
    raise unknown_choice("optimizer.learning_rate_scheme", scheme, LEARNING_RATE_SCHEMES)


def _warmup(step: int, warmup_steps: float) -> float:
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def learning_rate_schedule(hp, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """LambdaLR following `learning_rate`; call .step() once per applied update (the scheme's settings
    are checked when the config loads, hparams/validation.py)."""
    base = hp.optimizer.learning_rate
    return LambdaLR(optimizer, lambda step: learning_rate(hp, step) / base)
