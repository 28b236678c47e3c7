"""The jitted train step (SPEC.md section 6): applied updates, skipped updates, EMA, counters."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.train_step import (clip_gradients, create_train_state, init_params, make_eval_step,
                                            make_train_step, update_is_applied)
from tests.jax.helpers import load_reference_config, load_tiny_config

# Exponential LR with decay_start 0: the very first update already has lr > 0.
HP_OVERRIDES = ("optimizer.learning_rate_scheme='exponential'", "optimizer.decay_start=0",
                "optimizer.warmup_steps=0.", "train.ema_decay=0.9")


@pytest.fixture(scope="module")
def hp():
    return load_tiny_config(*HP_OVERRIDES)


@pytest.fixture(scope="module")
def initial_state(hp):
    return create_train_state(hp, init_params(hp, UniversalAutoEncoder(hp), jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def train_step(hp):
    return make_train_step(hp, donate_state=False)  # the tests compare states before and after a step


@pytest.fixture(scope="module")
def batch():
    return jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1.0, maxval=1.0)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_applied_step_updates_params_ema_and_counters(hp, initial_state, train_step, batch):
    state, stats = train_step(initial_state, jax.random.PRNGKey(2), batch)
    assert not bool(stats["skipped"])
    assert int(state.step) == 1 and int(state.skipped_updates) == 0
    assert np.isfinite(float(stats["loss"])) and float(stats["grad_norm"]) > 0
    assert float(stats["learning_rate"]) == pytest.approx(hp.optimizer.learning_rate)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial_state.params),
                                                       jax.tree.leaves(state.params))]
    assert sum(changed) > len(changed) // 2
    # EMA after one update: d * old + (1 - d) * new.
    for old, new, ema in zip(jax.tree.leaves(initial_state.params), jax.tree.leaves(state.params),
                             jax.tree.leaves(state.ema_params)):
        np.testing.assert_allclose(ema, 0.9 * np.asarray(old) + 0.1 * np.asarray(new), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["nan", "huge"])
def test_skipped_step_changes_nothing_but_the_skip_counter(hp, initial_state, train_step, batch, kind):
    state, _ = train_step(initial_state, jax.random.PRNGKey(2), batch)  # a state with non-trivial opt state
    bad = batch.at[0, 0, 0, 0].set(jnp.nan) if kind == "nan" else batch * 300.0
    after, stats = train_step(state, jax.random.PRNGKey(3), bad)
    norm = float(stats["grad_norm"])
    if kind == "nan":
        assert not np.isfinite(norm)
    else:
        assert np.isfinite(norm) and norm >= hp.optimizer.gradient_skip_threshold
    assert bool(stats["skipped"])
    assert int(after.step) == int(state.step) and int(after.skipped_updates) == int(state.skipped_updates) + 1
    assert_trees_equal(after.params, state.params)
    assert_trees_equal(after.ema_params, state.ema_params)
    assert_trees_equal(after.opt_state, state.opt_state)


def test_eval_step_uses_beta_one(hp, initial_state, batch):
    out = make_eval_step(hp)(initial_state.params, jax.random.PRNGKey(0), batch)
    assert float(out.beta) == 1.0
    assert float(out.loss) == pytest.approx(float(out.recon_loss) + float(jnp.sum(out.kl_per_group)), rel=1e-6)


def test_clip_gradients_caps_the_global_norm():
    grads = {"a": jnp.asarray([3.0, 0.0]), "b": {"c": jnp.asarray([[4.0]])}}  # global norm 5
    clipped = clip_gradients(grads, jnp.asarray(5.0), 2.5)
    np.testing.assert_allclose(clipped["a"], [1.5, 0.0], rtol=1e-5)
    np.testing.assert_allclose(clipped["b"]["c"], [[2.0]], rtol=1e-5)
    untouched = clip_gradients(grads, jnp.asarray(5.0), 300.0)
    np.testing.assert_allclose(untouched["a"], [3.0, 0.0])


@pytest.mark.parametrize("norm, applied", [(1.0, True), (799.9, True), (800.0, False), (np.inf, False),
                                           (np.nan, False)])
def test_skip_rule(norm, applied):
    assert bool(update_is_applied(load_reference_config(), jnp.asarray(norm, jnp.float32))) is applied
    assert bool(update_is_applied(load_reference_config("optimizer.gradient_skip=False"), jnp.asarray(norm)))
