"""Posterior noise for training that does not depend on the number of processes.

The model draws eps ~ N(0, 1) for every latent group with the process's RNG,
so a batch split over two ranks would see different noise than the same
batch in one process, and a resumed run different noise than an unbroken
one. Here every rank draws the noise of the WHOLE global batch from a
generator seeded by (run.seed, batch counter) and keeps its own rows (the
same contiguous slice the data sampler gives it). Training is then the same
computation for any world size, and resuming needs no RNG state. The cost is
drawing world_size times more (small) noise tensors than needed.

The noise goes in through the model's public `noise=` argument (SPEC section
11), from a forward pre-hook active only in training mode.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def latent_noise_shapes(hp: Any) -> list[tuple[int, int, int]]:
    """(variates, H, W) of every latent group, in top-down execution order."""
    model = hp.model
    resolution = hp.data.target_res // int(np.prod(model.down_strides))
    shapes = []
    for level, stride in enumerate(model.down_strides):
        resolution *= stride
        groups_in_level = 1 + model.down_n_blocks_per_res[level]
        shapes += [(model.down_latent_variates[level], resolution, resolution)] * groups_in_level
    return shapes


def noise_seed(seed: int, counter: int) -> int:
    """A 64-bit generator seed for (run seed, batch counter), well mixed by SeedSequence."""
    return int(np.random.SeedSequence([seed, counter]).generate_state(1, dtype=np.uint64)[0])


class SeededLatentNoise:
    """Supplies `noise=` to the model's training forward passes.

    Call `set_counter(k)` before the k-th training batch (k counts every batch
    consumed, skipped updates included); the hook then slices this rank's rows
    out of the global batch's noise.
    """

    def __init__(self, hp: Any, rank: int, world_size: int, device: torch.device):
        self.shapes = latent_noise_shapes(hp)
        self.seed = int(hp.run.seed)
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.counter: int | None = None

    def set_counter(self, counter: int) -> None:
        self.counter = counter

    # Eager under torch.compile: the seed is a new Python int every step, which a
    # traced graph would specialise on (one recompilation per step).
    @torch.compiler.disable
    def draw(self, local_batch: int) -> list[torch.Tensor]:
        if self.counter is None:
            raise RuntimeError("SeededLatentNoise.set_counter was not called before a training forward pass")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(noise_seed(self.seed, self.counter))
        rows = slice(self.rank * local_batch, (self.rank + 1) * local_batch)
        return [torch.randn((local_batch * self.world_size, *shape), generator=generator, device=self.device)[rows]
                for shape in self.shapes]

    def attach(self, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Install the hook on the unwrapped model (DDP and compile call through it)."""
        def supply_noise(module: nn.Module, args: tuple, kwargs: dict):
            if not module.training or kwargs.get("noise") is not None:
                return None
            x = args[0] if args else kwargs["x"]
            return args, {**kwargs, "noise": self.draw(x.shape[0])}

        return model.register_forward_pre_hook(supply_noise, with_kwargs=True)
