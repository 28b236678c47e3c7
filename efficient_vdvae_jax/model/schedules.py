"""Step-dependent schedules (SPEC.md sections 5 and 6): KL beta, KL balancing gamma, learning rate.

`step` is the number of updates applied before the current one (the first
update uses 0). Everything is jit-friendly: no Python branching on `step`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from hparams.schema import LEARNING_RATE_SCHEMES, VARIATION_SCHEDULES, unknown_choice

Schedule = Callable[[jax.Array], jax.Array]


def kl_beta(hp: Any, step: jax.Array | int) -> jax.Array:
    """The KL warm-up factor beta at `step`."""
    loss = hp.loss
    step = jnp.asarray(step, jnp.float32)
    if loss.variation_schedule == "None":
        return jnp.ones((), jnp.float32)
    if loss.variation_schedule == "Logistic":
        return 1.0 / (1.0 + jnp.exp(-loss.vae_beta_growth_rate * (step - loss.vae_beta_activation_steps)))
    if loss.variation_schedule == "Linear":
        # The denominator anneal_start + anneal_steps is the originals' (SPEC.md section 5).
        ramp = (step - loss.vae_beta_anneal_start) / (loss.vae_beta_anneal_start + loss.vae_beta_anneal_steps)
        return jnp.clip(ramp, loss.vae_beta_min, 1.0)
    raise unknown_choice("loss.variation_schedule", loss.variation_schedule, VARIATION_SCHEDULES)


def use_gamma(hp: Any, step: jax.Array | int | None) -> bool | jax.Array:
    """Whether KL balancing applies at `step`: False, known before tracing, in evaluation (step None)
    or without loss.use_gamma_schedule; else step <= loss.gamma_max_steps (traced under jit)."""
    if step is None or not hp.loss.use_gamma_schedule:
        return False
    return jnp.asarray(step) <= hp.loss.gamma_max_steps


def gamma_weights(balance_terms: jax.Array) -> jax.Array:
    """alpha_g = L * a_g / sum(a), a constant of the objective (no gradient)."""
    a = jax.lax.stop_gradient(balance_terms)
    return a.shape[0] * a / jnp.sum(a)


def learning_rate_schedule(hp: Any) -> Schedule:
    """lr(t) for t optimiser updates applied so far (SPEC.md section 6); the scheme's settings are checked
    when the config loads (hparams/validation.py)."""
    opt = hp.optimizer
    lr, warmup = opt.learning_rate, opt.warmup_steps
    scheme = opt.learning_rate_scheme

    def warmed_up(t: jax.Array) -> jax.Array:
        if warmup <= 0:  # no warm-up (and no 0 / 0)
            return jnp.full_like(t, lr)
        return lr * jnp.minimum(1.0, t / warmup)

    if scheme == "constant":
        return lambda t: warmed_up(jnp.asarray(t, jnp.float32))
    if scheme == "cosine":
        a = opt.min_learning_rate / lr

        def cosine(t: jax.Array) -> jax.Array:
            t = jnp.asarray(t, jnp.float32)
            u = jnp.minimum(t - opt.decay_start, opt.decay_steps)
            decayed = lr * ((1.0 - a) * 0.5 * (1.0 + jnp.cos(jnp.pi * u / opt.decay_steps)) + a)
            return jnp.where(t < opt.decay_start, warmed_up(t), decayed)

        return cosine
    if scheme == "exponential":
        def exponential(t: jax.Array) -> jax.Array:
            t = jnp.asarray(t, jnp.float32)
            decayed = lr * opt.decay_rate ** ((t - opt.decay_start) / opt.decay_steps)
            return jnp.clip(decayed, opt.min_learning_rate, lr)

        return exponential
    if scheme == "noam":
        def noam(t: jax.Array) -> jax.Array:
            t = jnp.asarray(t, jnp.float32)
            return lr * warmup ** 0.5 * jnp.minimum(t ** -0.5, t * warmup ** -1.5)

        return noam
    raise unknown_choice("optimizer.learning_rate_scheme", scheme, LEARNING_RATE_SCHEMES)
