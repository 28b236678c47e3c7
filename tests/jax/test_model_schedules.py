"""Schedules (SPEC.md sections 5 and 6) against hand-written closed forms and published numbers."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from efficient_vdvae_jax.model.schedules import kl_beta, learning_rate_schedule
from tests.jax.helpers import load_reference_config

STEPS = [0, 1, 50, 99, 100, 4000, 49999, 50000, 50001, 400000, 799999, 10 ** 7]


def test_cosine_reaches_the_published_value_at_400k():
    """SPEC.md section 12: the closed form gives 6.42e-4 at step 400k for the reference settings."""
    schedule = learning_rate_schedule(load_reference_config())
    assert float(schedule(400000)) == pytest.approx(6.418e-4, rel=1e-3)


@pytest.mark.parametrize("scheme", ["constant", "cosine", "exponential", "noam"])
def test_learning_rate_closed_forms(scheme):
    hp = load_reference_config(f"optimizer.learning_rate_scheme='{scheme}'")
    o = hp.optimizer
    lr, w = o.learning_rate, o.warmup_steps

    def expected(t: int) -> float:
        if scheme == "constant":
            return lr * min(1.0, t / w)
        if scheme == "cosine":
            if t < o.decay_start:
                return lr * min(1.0, t / w)
            a = o.min_learning_rate / lr
            u = min(t - o.decay_start, o.decay_steps)
            return lr * ((1 - a) * 0.5 * (1 + math.cos(math.pi * u / o.decay_steps)) + a)
        if scheme == "exponential":
            return min(max(lr * o.decay_rate ** ((t - o.decay_start) / o.decay_steps), o.min_learning_rate), lr)
        return 0.0 if t == 0 else lr * w ** 0.5 * min(t ** -0.5, t * w ** -1.5)

    schedule = jax.jit(learning_rate_schedule(hp))
    for t in STEPS:
        assert float(schedule(jnp.asarray(t))) == pytest.approx(expected(t), rel=1e-5, abs=1e-12), t


@pytest.mark.parametrize("scheme", ["constant", "cosine"])
def test_zero_warmup_means_full_learning_rate_from_step_0(scheme):
    hp = load_reference_config(f"optimizer.learning_rate_scheme='{scheme}'", "optimizer.warmup_steps=0.")
    assert float(learning_rate_schedule(hp)(0)) == pytest.approx(hp.optimizer.learning_rate)


@pytest.mark.parametrize("schedule", ["None", "Linear", "Logistic"])
def test_kl_beta_closed_forms(schedule):
    hp = load_reference_config(f"loss.variation_schedule='{schedule}'")
    s = hp.loss

    def expected(t: int) -> float:
        if schedule == "None":
            return 1.0
        if schedule == "Linear":
            return min(max((t - s.vae_beta_anneal_start) / (s.vae_beta_anneal_start + s.vae_beta_anneal_steps),
                           s.vae_beta_min), 1.0)
        return 1.0 / (1.0 + math.exp(-s.vae_beta_growth_rate * (t - s.vae_beta_activation_steps)))

    for t in STEPS:
        assert float(kl_beta(hp, t)) == pytest.approx(expected(t), rel=1e-5), t


def test_linear_beta_hand_values():
    """anneal_start 21, anneal_steps 5000, beta_min 1e-4: the denominator is 21 + 5000."""
    hp = load_reference_config()
    assert float(kl_beta(hp, 0)) == pytest.approx(1e-4)
    assert float(kl_beta(hp, 2531)) == pytest.approx(2510 / 5021, rel=1e-6)
    assert float(kl_beta(hp, 6000)) == 1.0
