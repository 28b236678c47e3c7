"""One PyTorch training step at a given step counter, on 1 process or as one torchrun rank (gloo).

    python -m torch.distributed.run --nproc_per_node=N gamma_step_worker.py OUT STEP [section.key=value ...]

Every rank builds the run exactly as the trainer does (`build_training`: seeded
weights, DDP, seeded latent noise), takes its rows of one fixed global batch,
records the averaged gradients of the training loss at `STEP`, then applies
one `train_step`. Rank 0 saves {gradients, parameters} to OUT (torch.save).
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

import torch

from efficient_vdvae_torch.distributed import init_distributed, shutdown_distributed
from efficient_vdvae_torch.model import compute_loss
from efficient_vdvae_torch.train_step import train_step
from efficient_vdvae_torch.trainer import build_training
from efficient_vdvae_common.noise_streams import TRAIN_STREAM, rank_rows
from hparams import load_config

CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"


def global_batch(hp) -> torch.Tensor:
    """A fixed batch of 8-bit images in model space [-1, 1]."""
    generator = torch.Generator().manual_seed(7)
    shape = (hp.train.batch_size, hp.data.channels, hp.data.target_res, hp.data.target_res)
    return torch.randint(0, 256, shape, generator=generator).float() / 127.5 - 1.0


def main(out: str, step: int, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    hp = load_config(CONFIG, overrides=overrides)
    ctx = init_distributed()
    setup, _ = build_training(hp, ctx, Path(out).with_suffix(".no_checkpoint"))
    first, count = rank_rows(hp.train.batch_size, ctx.rank, ctx.world_size)
    x = global_batch(hp)[first:first + count]

    noise = setup.noise.draw(TRAIN_STREAM, 0, hp.train.batch_size, count)
    logits, posterior, prior = setup.step_model(x, noise=noise)
    compute_loss(hp, x, logits, posterior, prior, step).loss.backward()  # DDP averages over ranks
    gradients = {name: p.grad.clone() for name, p in setup.model.named_parameters()}
    setup.optimizer.zero_grad(set_to_none=True)

    stats = train_step(hp, setup.step_model, setup.ema_model, setup.optimizer, setup.lr_schedule, x, step, noise)
    assert not stats["skipped"]
    if ctx.is_main:
        torch.save({"gradients": gradients, "beta": stats["beta"],
                    "parameters": {k: v.detach().clone() for k, v in setup.model.state_dict().items()}}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
