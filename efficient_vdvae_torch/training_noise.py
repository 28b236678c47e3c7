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

The trainer passes the drawn noise to the model's `noise=` argument (SPEC section 11).
"""
from __future__ import annotations

from typing import Any

import torch

from efficient_vdvae_common.architecture import group_shapes
from efficient_vdvae_common.noise_streams import rank_rows, stream_seed


def latent_noise_shapes(hp: Any) -> list[tuple[int, int, int]]:
    """(variates, H, W) of every latent group (NCHW without the batch), in top-down execution order."""
    return [(variates, resolution, resolution) for variates, resolution in group_shapes(hp)]


class SeededLatentNoise:
    """This rank's rows of the posterior noise of a global batch, and its output-sample generators."""

    def __init__(self, hp: Any, rank: int, world_size: int, device: torch.device):
        self.shapes = latent_noise_shapes(hp)
        self.seed = int(hp.run.seed)
        self.rank = rank
        self.world_size = world_size
        self.device = device

    def draw(self, stream: int, counter: int, global_batch: int, local_batch: int) -> list[torch.Tensor]:
        """The eps of batch `counter` of `stream` (TRAIN_STREAM or VALIDATION_STREAM), one tensor per latent
        group: this rank's `local_batch` rows of the `global_batch` rows every rank draws alike."""
        first, count = rank_rows(global_batch, self.rank, self.world_size)
        if count != local_batch:
            raise ValueError(f"rank {self.rank} has {local_batch} images, but a global batch of {global_batch} "
                             f"over {self.world_size} ranks gives it {count}")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stream_seed(self.seed, stream, counter))
        return [torch.randn((global_batch, *shape), generator=generator, device=self.device)[first:first + count]
                for shape in self.shapes]

    def output_generator(self, stream: int, counter: int) -> torch.Generator:
        """The generator of this rank's output samples of batch `counter` of `stream`
        (SUMMARY_STREAM or VALIDATION_OUTPUT_STREAM): derived, never saved."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(stream_seed(self.seed, stream, counter, self.rank))
        return generator
