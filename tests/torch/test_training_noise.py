"""Seeded posterior noise: the same numbers for any number of ranks, passed to the model's noise argument."""
import copy

import pytest
import torch

from efficient_vdvae_common.noise_streams import (SUMMARY_STREAM, TRAIN_STREAM, VALIDATION_OUTPUT_STREAM,
                                                  VALIDATION_STREAM, rank_rows)
from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.schedules import learning_rate_schedule
from efficient_vdvae_torch.train_step import train_step
from efficient_vdvae_torch.training_noise import SeededLatentNoise, latent_noise_shapes

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU = torch.device("cpu")


def test_shapes_match_the_models_latents(reference_config):
    model = UniversalAutoEncoder(reference_config)
    _, posterior, _ = model(torch.zeros(2, 3, 32, 32))
    assert [(2, *shape) for shape in latent_noise_shapes(reference_config)] == [tuple(m.shape) for m, _ in posterior]


@pytest.mark.parametrize("global_batch, world_size, expected", [
    (4, 2, [(0, 2), (2, 2)]),
    (3, 2, [(0, 2), (2, 1)]),  # an uneven last batch, split like numpy.array_split
    (1, 2, [(0, 1), (0, 0)]),
])
def test_rank_rows(global_batch, world_size, expected):
    assert [rank_rows(global_batch, r, world_size) for r in range(world_size)] == expected


def _draw(hp, rank, world_size, stream, counter, global_batch, local_batch):
    noise = SeededLatentNoise(hp, rank=rank, world_size=world_size, device=CPU)
    return noise.draw(stream, counter, global_batch, local_batch)


@pytest.mark.parametrize("global_batch", [4, 3])
def test_ranks_slice_the_single_process_noise(reference_config, global_batch):
    whole = _draw(reference_config, 0, 1, TRAIN_STREAM, 7, global_batch, global_batch)
    for rank in range(2):
        first, count = rank_rows(global_batch, rank, 2)
        part = _draw(reference_config, rank, 2, TRAIN_STREAM, 7, global_batch, count)
        for a, b in zip(part, whole):
            torch.testing.assert_close(a, b[first:first + count], rtol=0, atol=0)


def test_streams_and_counters_differ_and_look_normal(reference_config):
    base = _draw(reference_config, 0, 1, TRAIN_STREAM, 7, 4, 4)[0]
    assert not torch.equal(_draw(reference_config, 0, 1, TRAIN_STREAM, 8, 4, 4)[0], base)
    assert not torch.equal(_draw(reference_config, 0, 1, VALIDATION_STREAM, 7, 4, 4)[0], base)
    flat = torch.cat([n.flatten() for n in _draw(reference_config, 0, 1, TRAIN_STREAM, 7, 4, 4)])
    assert abs(flat.mean()) < 0.05 and abs(flat.std() - 1) < 0.05  # ~20k standard normal numbers


def test_output_generators_are_derived_per_stream_counter_and_rank(reference_config):
    """Output samples (SSIM, images) need no saved RNG state: the same (stream, counter, rank) gives the
    same numbers in a new process-like object, whatever the global RNG did; anything else differs."""
    def uniforms(rank, stream, counter):
        noise = SeededLatentNoise(reference_config, rank=rank, world_size=2, device=CPU)
        return torch.rand(1000, generator=noise.output_generator(stream, counter))

    base = uniforms(0, VALIDATION_OUTPUT_STREAM, 3)
    torch.manual_seed(99)
    torch.rand(10)
    assert torch.equal(uniforms(0, VALIDATION_OUTPUT_STREAM, 3), base)
    for other in (uniforms(1, VALIDATION_OUTPUT_STREAM, 3), uniforms(0, VALIDATION_OUTPUT_STREAM, 4),
                  uniforms(0, SUMMARY_STREAM, 3)):
        assert not torch.equal(other, base)


def test_wrong_local_batch_is_refused(reference_config):
    with pytest.raises(ValueError, match="rank 1 has 2 images, but a global batch of 3 over 2 ranks gives it 1"):
        _draw(reference_config, 1, 2, TRAIN_STREAM, 0, 3, 2)


def test_train_step_feeds_the_given_noise_to_the_model(reference_config):
    """train_step's `noise` is the posterior eps of its forward pass; without it the model's own RNG."""
    hp = reference_config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    eps = _draw(hp, 0, 1, TRAIN_STREAM, 3, 2, 2)
    torch.manual_seed(0)
    model = UniversalAutoEncoder(hp)
    initial = copy.deepcopy(model.state_dict())

    def logits_of_step(noise, seed):
        model.load_state_dict(initial)
        optimizer = build_optimizer(hp, model)
        torch.manual_seed(seed)
        return train_step(hp, model, copy.deepcopy(model), optimizer, learning_rate_schedule(hp, optimizer), x, 0,
                          noise)["logits"]

    with torch.no_grad():
        model.train()
        expected = model(x, noise=eps)[0]
    torch.testing.assert_close(logits_of_step(eps, seed=1), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits_of_step(eps, seed=2), expected, rtol=0, atol=0)
    assert not torch.equal(logits_of_step(None, seed=1), logits_of_step(None, seed=2))
