"""Posterior noise for training and validation that does not depend on the number of processes.

The model draws eps ~ N(0, 1) for every latent group with the process's RNG,
so a batch split over two ranks would see different noise than the same
batch in one process, and a resumed run different noise than an unbroken
one. Here every rank draws the noise of the WHOLE global batch from a
generator seeded by (run.seed, stream, batch counter) and keeps its own rows
(the slice the data sampler gives it). Training and validation are then the
same computation for any world size, and resuming needs no RNG state. The
cost is drawing world_size times more (small) noise tensors than needed.

The output samples (SSIM, TensorBoard images) come from `output_generator`,
seeded the same way plus the rank: each rank samples its own images, and a
resumed run draws what an unbroken one draws.

The noise goes in through the model's public `noise=` argument (SPEC section
11), from a forward pre-hook armed for one forward pass by `set_batch`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from efficient_vdvae_common.architecture import group_shapes

TRAIN_STREAM = 0
VALIDATION_STREAM = 1
SUMMARY_STREAM = 2  # output samples of the last train batch at evaluation step s (counter: s)
VALIDATION_OUTPUT_STREAM = 3  # output samples of validation batch i (counter: i)


def latent_noise_shapes(hp: Any) -> list[tuple[int, int, int]]:
    """(variates, H, W) of every latent group (NCHW without the batch), in top-down execution order."""
    return [(variates, resolution, resolution) for variates, resolution in group_shapes(hp)]


def noise_seed(seed: int, stream: int, counter: int, *more: int) -> int:
    """A 64-bit generator seed for (run seed, stream, batch counter, ...), well mixed by SeedSequence."""
    return int(np.random.SeedSequence([seed, stream, counter, *more]).generate_state(1, dtype=np.uint64)[0])


def rank_rows(global_batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first row, row count) of `rank` in a global batch, as the data sampler splits it:
    equal contiguous slices, an uneven last batch split as evenly as possible."""
    rows = np.array_split(np.arange(global_batch), world_size)[rank]
    return (int(rows[0]) if rows.size else 0), int(rows.size)


class SeededLatentNoise:
    """Supplies `noise=` to the model's forward passes, one armed batch at a time.

    Call `set_batch(stream, counter, global_batch)` before a forward pass: the
    hook then slices this rank's rows out of the global batch's noise. A
    forward pass that was not armed uses the model's own RNG.
    """

    def __init__(self, hp: Any, rank: int, world_size: int, device: torch.device):
        self.shapes = latent_noise_shapes(hp)
        self.seed = int(hp.run.seed)
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self._armed: tuple[int, int, int] | None = None

    def set_batch(self, stream: int, counter: int, global_batch: int) -> None:
        """Arm the next forward pass with batch `counter` of `stream` (TRAIN_STREAM: batches consumed
        so far, skipped updates included; VALIDATION_STREAM: batch index in the validation pass)."""
        self._armed = (stream, counter, global_batch)

    # Eager under torch.compile: the seed is a new Python int every step, which a
    # traced graph would specialise on (one recompilation per step).
    @torch.compiler.disable
    def draw(self, local_batch: int) -> list[torch.Tensor]:
        """This rank's rows of the armed batch's noise, one tensor per latent group; disarms."""
        if self._armed is None:
            raise RuntimeError("SeededLatentNoise.draw: no batch armed (call set_batch first)")
        stream, counter, global_batch = self._armed
        self._armed = None
        first, count = rank_rows(global_batch, self.rank, self.world_size)
        if count != local_batch:
            raise ValueError(f"rank {self.rank} has {local_batch} images, but a global batch of {global_batch} "
                             f"over {self.world_size} ranks gives it {count}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(noise_seed(self.seed, stream, counter))
        return [torch.randn((global_batch, *shape), generator=generator, device=self.device)[first:first + count]
                for shape in self.shapes]

    def output_generator(self, stream: int, counter: int) -> torch.Generator:
        """The generator of this rank's output samples of batch `counter` of `stream`
        (SUMMARY_STREAM or VALIDATION_OUTPUT_STREAM): derived, never saved."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(noise_seed(self.seed, stream, counter, self.rank))
        return generator

    def attach(self, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Install the hook on the unwrapped model (DDP and compile call through it)."""
        def supply_noise(module: nn.Module, args: tuple, kwargs: dict):
            if self._armed is None:
                return None
            if kwargs.get("noise") is not None:  # explicit noise wins
                self._armed = None
                return None
            x = args[0] if args else kwargs["x"]
            return args, {**kwargs, "noise": self.draw(x.shape[0])}

        return model.register_forward_pre_hook(supply_noise, with_kwargs=True)
