"""Optimisers (hand-unrolled updates, decoupled masked weight decay) and the training step."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.model.conv2d import Conv2d
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.schedules import learning_rate_schedule
from efficient_vdvae_torch.train_step import eval_step, train_step, update_ema
from tests.conftest import REFERENCE_DIR


class TwoConvs(nn.Module):
    """One decayed kernel (inside a cell's `convs`) and one exempt one (a z projection)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(Conv2d(1, 2, 1))
        self.z_projection = Conv2d(1, 2, 1)


def constant_lr_config(make_config, *extra):
    return make_config("optimizer.learning_rate_scheme=constant", "optimizer.warmup_steps=0.",
                       "optimizer.learning_rate=0.01", "loss.l2_weight=0.1", *extra)


def test_adamax_matches_a_hand_unrolled_two_step_update(make_config):
    hp = constant_lr_config(make_config)
    model = TwoConvs()
    optimizer = build_optimizer(hp, model)
    lr, b1, b2, eps, l2 = 0.01, 0.9, 0.999, 1e-8, 0.1
    grads = [np.array([0.5, -2.0]), np.array([-1.0, 0.1])]

    decayed = model.convs[0].weight
    exempt = model.z_projection.weight
    p = {"decayed": decayed.detach().double().numpy().ravel().copy(),
         "exempt": exempt.detach().double().numpy().ravel().copy()}
    m = {k: np.zeros(2) for k in p}
    u = {k: np.zeros(2) for k in p}
    for t, g in enumerate(grads, start=1):
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        decayed.grad = torch.tensor(g, dtype=torch.float32).reshape(decayed.shape)
        exempt.grad = torch.tensor(g, dtype=torch.float32).reshape(exempt.shape)
        optimizer.step()
        for k, rate in (("decayed", l2), ("exempt", 0.0)):
            m[k] = b1 * m[k] + (1 - b1) * g
            u[k] = np.maximum(b2 * u[k], np.abs(g) + eps)
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t) / u[k] + rate * p[k])
    np.testing.assert_allclose(decayed.detach().numpy().ravel(), p["decayed"], rtol=1e-6)
    np.testing.assert_allclose(exempt.detach().numpy().ravel(), p["exempt"], rtol=1e-6)


@pytest.mark.parametrize("name", ["Adamax", "Adam", "RAdam", "Radam"])
def test_decay_is_decoupled_and_only_on_masked_kernels(make_config, name):
    """With zero gradients every Adam-family update is 0, so only the decay moves parameters."""
    hp = constant_lr_config(make_config, f"optimizer.type={name}")
    model = TwoConvs()
    before = copy.deepcopy(model)
    optimizer = build_optimizer(hp, model)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    torch.testing.assert_close(model.convs[0].weight, before.convs[0].weight * (1 - 0.01 * 0.1))
    for a, b in ((model.z_projection, before.z_projection),):
        torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(model.convs[0].bias, before.convs[0].bias)


def test_weight_decay_off(make_config):
    hp = constant_lr_config(make_config, "loss.use_weight_decay=False")
    model = TwoConvs()
    before = model.convs[0].weight.detach().clone()
    optimizer = build_optimizer(hp, model)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    torch.testing.assert_close(model.convs[0].weight, before)


def test_decay_mask_on_the_full_model(reference_config):
    model = UniversalAutoEncoder(reference_config)
    optimizer = build_optimizer(reference_config, model)
    decayed_ids = {id(p) for p in optimizer.param_groups[0]["params"]}
    # By key grammar: kernels of residual cells (prior/posterior nets included) and of (un)pool convs.
    expected = {k for k in model.state_dict()
                if re.search(r"(\.convs\.\d+|\.pool\.ops\.0|\.unpool\.ops\.0)\.weight$", k)}
    ours = {k for k, p in model.named_parameters() if id(p) in decayed_ids}
    assert ours == expected
    assert len(optimizer.param_groups[0]["params"]) + len(optimizer.param_groups[1]["params"]) == \
        len(list(model.parameters()))


def test_update_ema():
    ema, model = TwoConvs(), TwoConvs()
    expected = [0.9 * e.detach() + 0.1 * p.detach() for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.9)
    for e, x in zip(ema.parameters(), expected):
        torch.testing.assert_close(e.detach(), x)


@pytest.fixture
def training_setup(make_config):
    def build(*overrides):
        hp = make_config("optimizer.warmup_steps=1.", *overrides)
        torch.manual_seed(0)
        model = UniversalAutoEncoder(hp)
        ema = copy.deepcopy(model).requires_grad_(False)
        optimizer = build_optimizer(hp, model)
        schedule = learning_rate_schedule(hp, optimizer)
        x = torch.from_numpy(np.load(REFERENCE_DIR / "batch.npz")["input"][:2])
        return hp, model, ema, optimizer, schedule, x
    return build


def state_copy(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_train_step_updates_parameters_schedule_and_ema(training_setup):
    hp, model, ema, optimizer, schedule, x = training_setup()
    # Step 0 has learning rate 0 (warm-up); step 1 moves the weights.
    stats0 = train_step(hp, model, ema, optimizer, schedule, x, step=0)
    assert stats0["learning_rate"] == 0.0 and not stats0["skipped"]
    before, ema_before = state_copy(model), state_copy(ema)
    stats = train_step(hp, model, ema, optimizer, schedule, x, step=1)
    assert not stats["skipped"] and np.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert stats["learning_rate"] == pytest.approx(1e-3)
    assert schedule.last_epoch == 2
    after = state_copy(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    decay = hp.train.ema_decay
    for k, v in state_copy(ema).items():
        torch.testing.assert_close(v, decay * ema_before[k] + (1 - decay) * after[k])
    assert all(p.grad is None for p in model.parameters())
    assert set(stats) >= {"loss", "recon_loss", "kl_div", "nelbo", "kl_per_group", "avg_kl_per_group",
                          "active_groups", "grad_norm", "skipped", "learning_rate", "beta"}


@pytest.mark.parametrize("case", ["threshold", "nan"])
def test_skipped_update_changes_nothing(training_setup, case):
    overrides = ("optimizer.gradient_skip_threshold=1e-6",) if case == "threshold" else ()
    hp, model, ema, optimizer, schedule, x = training_setup(*overrides)
    if case == "nan":
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
    before, ema_before = state_copy(model), state_copy(ema)
    stats = train_step(hp, model, ema, optimizer, schedule, x, step=0)
    assert stats["skipped"]
    assert schedule.last_epoch == 0 and not optimizer.state
    for k, v in state_copy(model).items():
        assert torch.equal(v, before[k])
    for k, v in state_copy(ema).items():
        assert torch.equal(v, ema_before[k])


def test_gradient_clipping_limits_the_update(training_setup):
    # With Adamax an update is ~lr * sign(g) unless |g| is comparable to eps: clipping the
    # gradients to a norm of 1e-9 makes them eps-sized, so the weights move far less.
    moves = []
    no_warmup = "optimizer.warmup_steps=0."
    for overrides in [(no_warmup,), (no_warmup, "optimizer.clip_gradient_norm=True",
                                     "optimizer.gradient_clip_norm_value=1e-9")]:
        hp, model, ema, optimizer, schedule, x = training_setup(*overrides)
        before = state_copy(model)
        stats = train_step(hp, model, ema, optimizer, schedule, x, step=0)
        moves.append(sum((v - before[k]).abs().sum().item() for k, v in state_copy(model).items()))
        assert stats["grad_norm"] > 1e-3  # reported before clipping
    assert moves[1] < 0.5 * moves[0]


def test_eval_step_uses_beta_one(training_setup):
    hp, model, ema, optimizer, schedule, x = training_setup()
    stats = eval_step(hp, model, x)
    assert stats["beta"] == 1.0
    assert stats["nelbo"] == pytest.approx(stats["recon_report"] + stats["kl_div"], rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["Adamax", "Adam", "RAdam"])
def test_foreach_path_equals_the_per_tensor_loop_and_survives_loading(make_config, kind):
    hp = constant_lr_config(make_config, f"optimizer.type='{kind}'")
    models = [TwoConvs(), TwoConvs()]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [build_optimizer(hp, model) for model in models]
    for group in optimizers[1].param_groups:
        group["foreach"] = False
    for step in range(3):
        for model, optimizer in zip(models, optimizers):
            for i, p in enumerate(model.parameters()):
                p.grad = torch.full_like(p, (-1.0) ** i * (step + 1) * 0.3)
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # An older checkpoint saved the per-tensor choice (foreach None): loading keeps the foreach path.
    saved = optimizers[1].state_dict()
    for group in saved["param_groups"]:
        group["foreach"] = None
    optimizers[0].load_state_dict(saved)
    assert all(group["foreach"] is True for group in optimizers[0].param_groups)
