"""Learning-rate and KL-weight schedules at chosen steps, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from efficient_vdvae_torch.model.schedules import learning_rate_schedule, kl_beta, learning_rate


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (50, 5e-4), (100, 1e-3), (49_999, 1e-3), (50_000, 1e-3),
    (50_000 + 375_000, 6e-4),   # half-way: 0.8 * 0.5 * (1 + cos(pi/2)) + 0.2 = 0.6
    (400_000, 6.4181e-4),        # 0.8 * 0.5 * (1 + cos(pi * 350/750)) + 0.2, SPEC.md section 12
    (800_000, 2e-4), (5_000_000, 2e-4),
])
def test_cosine(reference_config, step, expected):
    # lr 1e-3, warmup 100, decay_start 50k, decay_steps 750k, min 2e-4
    assert learning_rate(reference_config, step) == pytest.approx(expected, rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (5, 1e-3), (10, 2e-3), (1000, 2e-3)])
def test_constant(make_config, step, expected):
    hp = make_config("optimizer.learning_rate_scheme=constant", "optimizer.learning_rate=2e-3",
                     "optimizer.warmup_steps=10.")
    assert learning_rate(hp, step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 1e-3), (100, 1e-3), (1100, 5e-4), (2100, 2.5e-4), (100_000, 1e-4)])
def test_exponential(make_config, step, expected):
    hp = make_config("optimizer.learning_rate_scheme=exponential", "optimizer.decay_rate=0.5",
                     "optimizer.decay_start=100", "optimizer.decay_steps=1000", "optimizer.min_learning_rate=1e-4")
    assert learning_rate(hp, step) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (100, 2.5e-4), (400, 1e-3), (1600, 5e-4)])
def test_noam(make_config, step, expected):
    # lr * 400^0.5 * min(t^-0.5, t * 400^-1.5): t=100 -> 20 * 0.0125; t=1600 -> 20 * 0.025
    hp = make_config("optimizer.learning_rate_scheme=noam", "optimizer.warmup_steps=400.")
    assert learning_rate(hp, step) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_lambda_lr_sets_the_optimizer_rate_after_each_update(reference_config):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adamax([param], lr=reference_config.optimizer.learning_rate)
    schedule = learning_rate_schedule(reference_config, optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.0
    for t in range(1, 4):
        optimizer.step()
        schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * t / 100)


@pytest.mark.parametrize("step, expected", [(0, 1e-4), (21, 1e-4), (4000, 3979 / 5021), (5042, 1.0), (10**9, 1.0)])
def test_linear_beta(reference_config, step, expected):
    # clip((step - 21) / (21 + 5000), 1e-4, 1): the denominator keeps anneal_start, as in the originals.
    assert kl_beta(reference_config, step) == pytest.approx(expected)


@pytest.mark.parametrize("step, expected", [
    (10_000, 0.5), (10_000 + math.log(3) / 1e-5, 0.75), (0, 1 / (1 + math.e ** 0.1)),
])
def test_logistic_beta(make_config, step, expected):
    hp = make_config("loss.variation_schedule=Logistic")  # activation 10000, growth 1e-5
    assert kl_beta(hp, step) == pytest.approx(expected)


def test_no_beta_schedule(make_config):
    assert kl_beta(make_config("loss.variation_schedule='None'"), 0) == 1.0
