"""Seeded training noise: the same numbers for any number of ranks, fed through the model's noise argument."""
import torch

from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.training_noise import SeededLatentNoise, latent_noise_shapes

CPU = torch.device("cpu")


def test_shapes_match_the_models_latents(reference_config):
    model = UniversalAutoEncoder(reference_config)
    _, posterior, _ = model(torch.zeros(2, 3, 32, 32))
    assert [(2, *shape) for shape in latent_noise_shapes(reference_config)] == [tuple(m.shape) for m, _ in posterior]


def test_ranks_slice_the_single_process_noise(reference_config):
    single = SeededLatentNoise(reference_config, rank=0, world_size=1, device=CPU)
    single.set_counter(7)
    whole = single.draw(local_batch=4)
    for rank in range(2):
        part = SeededLatentNoise(reference_config, rank=rank, world_size=2, device=CPU)
        part.set_counter(7)
        for a, b in zip(part.draw(local_batch=2), whole):
            torch.testing.assert_close(a, b[2 * rank:2 * rank + 2], rtol=0, atol=0)
    single.set_counter(8)
    assert not torch.equal(single.draw(4)[0], whole[0])
    # Standard normal: mean ~0, std ~1 over the ~20k numbers drawn.
    flat = torch.cat([n.flatten() for n in whole])
    assert abs(flat.mean()) < 0.05 and abs(flat.std() - 1) < 0.05


def test_hook_feeds_training_passes_only(reference_config):
    model = UniversalAutoEncoder(reference_config)
    noise = SeededLatentNoise(reference_config, rank=0, world_size=1, device=CPU)
    noise.attach(model)
    noise.set_counter(3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    hooked = model(x)[0]
    expected = model(x, noise=noise.draw(2))[0]  # the explicit argument wins over the hook
    torch.testing.assert_close(hooked, expected, rtol=0, atol=0)
    model.eval()
    torch.manual_seed(0)
    first = model(x)[0]
    torch.manual_seed(1)
    assert not torch.equal(first, model(x)[0])  # evaluation keeps the model's own RNG
