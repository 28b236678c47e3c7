"""run.mixed_precision: bf16 compute, float32 loss, weights and optimiser state (as in JAX)."""
import copy

import pytest
import torch

from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.schedules import learning_rate_schedule
from efficient_vdvae_torch.train_step import train_step
from tests.helpers import TINY_MODEL


def one_step(hp, model, x):
    model = copy.deepcopy(model)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = build_optimizer(hp, model)
    stats = train_step(hp, model, ema, optimizer, learning_rate_schedule(hp, optimizer), x, step=0)
    return model, optimizer, stats


def test_mixed_precision_close_to_float32(make_config, single_torch_thread):
    hp32 = make_config(*TINY_MODEL, "optimizer.warmup_steps=0")
    hp16 = make_config(*TINY_MODEL, "optimizer.warmup_steps=0", "run.mixed_precision=True")
    torch.manual_seed(0)
    model = UniversalAutoEncoder(hp32)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    noise_seed = 3

    torch.manual_seed(noise_seed)
    _, _, stats32 = one_step(hp32, model, x)
    torch.manual_seed(noise_seed)
    model16, optimizer16, stats16 = one_step(hp16, model, x)

    assert stats32["logits"].dtype == torch.float32
    assert stats16["logits"].dtype == torch.bfloat16
    assert stats16["loss"] == pytest.approx(stats32["loss"], rel=0.02)
    assert not stats16["skipped"]
    # Weights and optimiser state stay float32, and the update was applied.
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert all(v.dtype == torch.float32 for state in optimizer16.state.values() for v in state.values()
               if torch.is_tensor(v) and v.is_floating_point())
    assert any(not torch.equal(p, q) for p, q in zip(model16.parameters(), model.parameters()))
