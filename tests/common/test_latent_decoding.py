"""Decoding mode (efficient_vdvae_common.latent_decoding and both frameworks' decode): latents from an
encodings file back to images; the posterior means of a full encoding retrace the deterministic reconstruction."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.encodings import (Encodings, EncodingsError, GroupEncoding, read_encodings,
                                              write_encodings)
from efficient_vdvae_common.architecture import group_shapes
from efficient_vdvae_common.latent_decoding import (check_encodings_fit, decoding_batches, decoding_inputs,
                                                    interpolate_encodings)
from efficient_vdvae_common.synthesis_files import div_stats_path, encodings_path, reconstruction_dir
from efficient_vdvae_common.variate_masks import save_div_stats
from hparams import load_config
from tests.helpers import FRAMEWORKS_JAX_SLOW

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _encodings(rng, names, shapes_and_variates):
    groups = {}
    for g, (size, variates) in shapes_and_variates.items():
        mean = rng.normal(size=(len(names), size, size, len(variates)))
        std = rng.random((len(names), size, size, len(variates))) + 0.5
        groups[g] = GroupEncoding(np.asarray(variates), np.stack([mean, std], axis=-1).astype(np.float32))
    return Encodings(list(names), groups)


SHAPES = [(4, 2), (4, 4), (3, 8)]  # (variates, resolution) per group


def test_inputs_hold_the_means_at_the_active_variates_and_zeros_elsewhere():
    encodings = _encodings(np.random.default_rng(0), ["a", "b", "c"], {0: (2, [1, 3]), 2: (8, [0])})
    latents, masks = decoding_inputs(encodings, slice(1, 3), SHAPES)
    assert [z.shape for z in latents] == [(2, 2, 2, 4), (2, 4, 4, 4), (2, 8, 8, 3)]
    assert [m.tolist() for m in masks] == [[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0]]
    np.testing.assert_array_equal(latents[0][..., [1, 3]], encodings.groups[0].posterior[1:3, ..., 0])
    np.testing.assert_array_equal(latents[2][..., 0], encodings.groups[2].posterior[1:3, ..., 0, 0])
    assert not latents[0][..., [0, 2]].any() and not latents[1].any() and not latents[2][..., 1:].any()


def test_posterior_samples_are_mean_plus_temperature_std_eps():
    encodings = _encodings(np.random.default_rng(1), ["a", "b"], {1: (4, [0, 2])})
    latents, _ = decoding_inputs(encodings, slice(0, 2), SHAPES, 0.5, np.random.default_rng(7))
    eps = np.random.default_rng(7).standard_normal((2, 4, 4, 2), dtype=np.float32)
    mean, std = encodings.groups[1].posterior[..., 0], encodings.groups[1].posterior[..., 1]
    np.testing.assert_allclose(latents[1][..., [0, 2]], mean + 0.5 * std * eps, rtol=1e-6)
    # The samples' spread around the means is 0.5 * std.
    many = _encodings(np.random.default_rng(2), [str(i) for i in range(400)], {1: (4, [0])})
    z, _ = decoding_inputs(many, slice(0, 400), SHAPES, 0.5, np.random.default_rng(3))
    u = (z[1][..., 0] - many.groups[1].posterior[..., 0, 0]) / (0.5 * many.groups[1].posterior[..., 0, 1])
    assert abs(u.mean()) < 0.02 and abs(u.std() - 1.0) < 0.02
    with pytest.raises(ValueError, match="needs an rng"):
        decoding_inputs(encodings, slice(0, 1), SHAPES, 0.5)


def test_encodings_of_another_model_are_refused_naming_the_file():
    names = ["a", "b"]
    check_encodings_fit(_encodings(np.random.default_rng(0), names, {2: (8, [2])}), SHAPES, "e.npz")
    for groups, message in (({3: (8, [0])}, "group 3, but this model has 3 latent groups"),
                            ({2: (8, [3])}, "group 2 holds variate 3, but this model's group has 3 variates"),
                            ({1: (8, [0])}, "group 1 is 8x8, this model's is 4x4")):
        with pytest.raises(EncodingsError, match=f"encodings file e.npz: {message}"):
            check_encodings_fit(_encodings(np.random.default_rng(0), names, groups), SHAPES, "e.npz")


def test_interpolation_runs_from_one_image_to_the_other():
    encodings = _encodings(np.random.default_rng(0), ["x/a.png", "b.png", "c.png"], {0: (2, [1]), 1: (4, [0, 3])})
    line = interpolate_encodings(encodings, "x/a.png", "c.png", steps=5)
    assert line.file_names == [f"x_a~c-{i}" for i in range(5)]
    for g in (0, 1):
        posterior = line.groups[g].posterior
        np.testing.assert_array_equal(posterior[0], encodings.groups[g].posterior[0])
        np.testing.assert_allclose(posterior[4], encodings.groups[g].posterior[2], rtol=1e-6)
        np.testing.assert_allclose(posterior[2], encodings.groups[g].posterior[[0, 2]].mean(axis=0), rtol=1e-5)
    assert [(s.start, s.stop) for s in decoding_batches(10, 4)] == [(0, 4), (4, 8), (8, 10)]


# ---- On the tiny trained runs, both frameworks (in-process).


def _copy_run(run, name: str, destination: Path) -> Path:
    """The run's checkpoints and saved config, without any synthesis output."""
    source = run.root / f"checkpoints-{name}"
    copy = shutil.copytree if source.is_dir() else shutil.copy2
    copy(source, destination / source.name)
    (destination / f"logs-{name}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{name}")
    return destination


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _torch_synthesis(hp, root: Path, posterior_temperature: float = 1.0) -> None:
    import torch

    from efficient_vdvae_torch.synthesis import run_synthesis

    run_synthesis(hp, torch.device("cpu"), root, posterior_temperature)


def _jax_synthesis(hp, root: Path, posterior_temperature: float = 1.0) -> None:
    from efficient_vdvae_jax.synthesis import run_synthesis

    run_synthesis(hp, root, posterior_temperature)


def _torch_logits(hp, root: Path, encodings: Encodings) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the posterior-means reconstruction of the synthesis set, and of decoding `encodings`' means."""
    import torch

    from efficient_vdvae_torch.data import create_dataloader
    from efficient_vdvae_torch.synthesis import decode_latents, load_synthesis_model

    model = load_synthesis_model(hp, torch.device("cpu"), root)
    reconstructed, decoded, start = [], [], 0
    # Batches as the modes ran them (4 and 2 images): a convolution's last bits may depend on the batch size.
    for x in create_dataloader(hp, "synthesis"):
        with torch.no_grad():
            reconstructed.append(model(x, posterior_temperature=0.0)[0].numpy())
        latents, masks = decoding_inputs(encodings, slice(start, start + len(x)), group_shapes(hp))
        decoded.append(decode_latents(model, latents, masks, 1.0, torch.device("cpu")).numpy())
        start += len(x)
    return np.concatenate(reconstructed), np.concatenate(decoded)


def _jax_logits(hp, root: Path, encodings: Encodings) -> tuple[np.ndarray, np.ndarray]:
    import jax

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.synthesis import load_synthesis_params, padded_batches

    model = UniversalAutoEncoder(hp)
    variables = {"params": load_synthesis_params(hp, model, root)}
    key = jax.random.PRNGKey(0)
    reconstructed, decoded, start = [], [], 0
    for x, mask in padded_batches(hp, "synthesis"):
        x = x[mask]  # the real images only; eager, no compile to share
        reconstructed.append(np.asarray(model.apply(variables, key, x, posterior_temperature=0.0)[0]))
        latents, masks = decoding_inputs(encodings, slice(start, start + len(x)), group_shapes(hp))
        decoded.append(np.asarray(model.apply(variables, key, latents, masks, 1.0, method=model.decode)))
        start += len(x)
    return np.concatenate(reconstructed), np.concatenate(decoded)


LOGITS = {"torch": _torch_logits, "jax": _jax_logits}
FRAMEWORKS = {"torch": ("torch_run", "tiny", _torch_synthesis), "jax": ("jax_run", "tiny_jax", _jax_synthesis)}


@pytest.mark.parametrize("framework", FRAMEWORKS_JAX_SLOW)
def test_decoding_the_means_of_a_full_encoding_is_the_deterministic_reconstruction(framework, request, tmp_path):
    fixture, name, synthesize = FRAMEWORKS[framework]
    run = request.getfixturevalue(fixture)
    root = _copy_run(run, name, tmp_path)
    logs = root / f"logs-{name}"
    saved = logs / f"hparams-{name}.cfg"
    synthesis_images = run.images / "synthesis"

    def hp(*overrides: str):
        # Output means: no per-pixel noise, so equal logits give equal files.
        return load_config(saved, overrides=("synthesis.output_sampling=mean", *overrides))

    synthesize(hp("synthesis.synthesis_mode=reconstruction"), root, posterior_temperature=0.0)
    # Encode the synthesis images along the posterior-means path, every variate kept (quantile 1 keeps all,
    # whatever div_stats holds).
    shapes = group_shapes(hp())
    save_div_stats(div_stats_path(logs), np.zeros((len(shapes), shapes[0][0]), np.float32))
    synthesize(hp("synthesis.synthesis_mode=encoding", "synthesis.variate_masks_quantile=1.0",
                  f"data.train_data_path='{synthesis_images}'"), root, posterior_temperature=0.0)
    synthesize(hp("synthesis.synthesis_mode=decoding", "synthesis.temperature_settings=[1.0]"), root)

    decoded = logs / "synthesis-images" / "decoded" / "00_T-1"
    reconstructed = sorted(p.relative_to(reconstruction_dir(logs)) for p in reconstruction_dir(logs).rglob("*.png"))
    assert len(reconstructed) == 6
    assert sorted(p.relative_to(decoded) for p in decoded.rglob("*.png")) == reconstructed
    for relative in reconstructed:
        np.testing.assert_array_equal(_png(decoded / relative), _png(reconstruction_dir(logs) / relative),
                                      err_msg=str(relative))
    assert (logs / "synthesis-images" / "grids" / "decoding-00_T-1.png").is_file()

    # The same through the public functions, on the logits themselves: bit for bit.
    encodings = read_encodings(encodings_path(logs))
    assert encodings.file_names == [p.as_posix() for p in reconstructed]
    assert all(group.variates.size == shapes[g][0] for g, group in encodings.groups.items())
    reconstructed_logits, decoded_logits = LOGITS[framework](hp(), root, encodings)
    np.testing.assert_array_equal(decoded_logits, reconstructed_logits)

    # The posterior at temperature 1 instead of its means, and pruned variates from the prior: other images.
    kept = {g: GroupEncoding(group.variates[:1], group.posterior[..., :1, :]) for g, group in encodings.groups.items()}
    write_encodings(tmp_path / "pruned.npz", Encodings(encodings.file_names, kept))
    synthesize(hp("synthesis.synthesis_mode=decoding", "synthesis.temperature_settings=[1.0]",
                  "synthesis.decoding_posterior_temperature=1.0",
                  f"synthesis.decoding_encodings_path='{tmp_path / 'pruned.npz'}'"), root)
    assert any(not np.array_equal(_png(decoded / r), _png(reconstruction_dir(logs) / r)) for r in reconstructed)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_missing_or_foreign_encodings_stop_before_writing(framework, request, tmp_path, monkeypatch, capsys):
    fixture, name, _ = FRAMEWORKS[framework]
    run = request.getfixturevalue(fixture)
    root = _copy_run(run, name, tmp_path)
    if framework == "torch":
        from efficient_vdvae_torch.synthesize import main
    else:
        from efficient_vdvae_jax.synthesize import main
    monkeypatch.chdir(root)
    base = ["--config", str(run.saved_config), "--set", f"run.name={name}", "synthesis.synthesis_mode=decoding"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no encodings file at logs-{name}/latents/encodings.npz" in err

    foreign = tmp_path / "foreign.npz"
    write_encodings(foreign, Encodings(["a"], {0: GroupEncoding(np.array([0]), np.zeros((1, 3, 3, 1, 2), np.float32))}))
    assert main(base + [f"synthesis.decoding_encodings_path='{foreign}'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"encodings file {foreign}: group 0 is 3x3" in err
    assert not (root / f"logs-{name}" / "synthesis-images").exists()
