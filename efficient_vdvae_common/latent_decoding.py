"""Decoding mode (SPEC.md section 8): images from an encodings file, framework-free.

An encodings file (efficient_vdvae_common.encodings) holds, per image, the
posterior (mean, std) of the active variates of some latent groups. Decoding
turns it back into a full set of latents for the top-down pass:

- an active variate takes its posterior mean (`posterior_temperature = 0`,
  the default), or `mean + T * std * eps` with eps drawn here from numpy's
  generator, so both frameworks decode the same latents;
- every other variate (pruned by the div_stats masks, or of a group with none
  active) is drawn from the prior inside the model at the temperature of the
  setting being decoded (`synthesis.temperature_settings`).

`decoding_inputs` returns per group a full-size latent array (NHWC, zeros at
the pruned variates) and a 0/1 mask of the active variates; each framework's
`decode_latents` feeds them to the model. `interpolate_encodings` builds the
encodings of points between two images, for programmatic use:

    encodings = read_encodings("logs-run/latents/encodings.npz")
    path = interpolate_encodings(encodings, "a.png", "b.png", steps=5)
    images = decode_encodings(hp, model, ..., path, temperatures)   # one framework's function
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from efficient_vdvae_common.encodings import Encodings, EncodingsError, GroupEncoding, read_encodings
from efficient_vdvae_common.image_grids import SampleGrid
from efficient_vdvae_common.images import write_png
from efficient_vdvae_common.synthesis_files import encodings_path, image_stem, temperature_folder_name
from efficient_vdvae_common.temperatures import expand_temperature_settings

DECODED_FOLDER = "decoded"
# numpy stream of the posterior samples: apart from every other use of run.seed.
POSTERIOR_SAMPLE_STREAM = 13


def decoding_dir(run_logs: str | Path) -> Path:
    """`logs-<name>/synthesis-images/decoded/`: one folder per temperature setting below it."""
    return Path(run_logs) / "synthesis-images" / DECODED_FOLDER


def decoding_grid_path(decoded_dir: str | Path, setting_folder: str) -> Path:
    """`synthesis-images/grids/decoding-<setting folder>.png` for `synthesis-images/decoded/`."""
    return Path(decoded_dir).parent / "grids" / f"decoding-{setting_folder}.png"


def decoding_encodings_path(hp: Any, run_logs: str | Path) -> Path:
    """synthesis.decoding_encodings_path, or the run's `latents/encodings.npz` when it is empty."""
    explicit = hp.synthesis.decoding_encodings_path
    return Path(explicit) if explicit else encodings_path(run_logs)


def check_encodings_fit(encodings: Encodings, shapes: Sequence[tuple[int, int]], source: str | Path) -> None:
    """Refuse (EncodingsError naming `source`) encodings of another model.

    `shapes`: (variates, resolution) of every latent group in top-down order.
    """
    for g, group in encodings.groups.items():
        if not 0 <= g < len(shapes):
            raise EncodingsError(f"encodings file {source}: group {g}, but this model has {len(shapes)} latent "
                                 "groups (encode with this run)")
        variates, size = shapes[g]
        if group.variates[-1] >= variates:
            raise EncodingsError(f"encodings file {source}: group {g} holds variate {int(group.variates[-1])}, but "
                                 f"this model's group has {variates} variates (encode with this run)")
        if group.posterior.shape[1:3] != (size, size):
            raise EncodingsError(f"encodings file {source}: group {g} is {group.posterior.shape[1]}x"
                                 f"{group.posterior.shape[2]}, this model's is {size}x{size} (encode with this run)")


def load_encodings_for_decoding(hp: Any, run_logs: str | Path, shapes: Sequence[tuple[int, int]]) -> Encodings:
    """The encodings decoding mode reads, checked against the model; EncodingsError names the file."""
    path = decoding_encodings_path(hp, run_logs)
    if not path.is_file():
        raise EncodingsError(f"no encodings file at {path}: run synthesize.py with synthesis.synthesis_mode="
                             "encoding first, or set synthesis.decoding_encodings_path")
    encodings = read_encodings(path)
    check_encodings_fit(encodings, shapes, path)
    return encodings


def posterior_sample_rng(seed: int) -> np.random.Generator:
    """The generator of the stored posteriors' samples; decoding mode restarts it per temperature setting."""
    return np.random.default_rng([seed, POSTERIOR_SAMPLE_STREAM])


def decoding_inputs(encodings: Encodings, rows: np.ndarray | slice, shapes: Sequence[tuple[int, int]],
                    posterior_temperature: float = 0.0, rng: np.random.Generator | None = None
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(latents, masks) for images `rows` of `encodings`.

    latents: per group a (B, H, W, variates) float32 array (NHWC) holding the
    active variates' values (posterior means at `posterior_temperature` 0,
    else posterior samples at that temperature, eps from `rng`) and zeros
    elsewhere; masks: per group a (variates,) float32 array, 1 where a variate
    is taken from `latents`, 0 where the prior is sampled.
    """
    if posterior_temperature < 0:
        raise ValueError(f"posterior_temperature must be >= 0, got {posterior_temperature}")
    if posterior_temperature > 0 and rng is None:
        raise ValueError("a posterior_temperature above 0 needs an rng")
    count = len(np.arange(len(encodings.file_names))[rows])
    masks = [np.zeros(variates, np.float32) for variates, _ in shapes]
    latents = [np.zeros((count, size, size, variates), np.float32) for variates, size in shapes]
    for g in sorted(encodings.groups):
        group = encodings.groups[g]
        posterior = np.asarray(group.posterior[rows], np.float32)
        values = posterior[..., 0]
        if posterior_temperature > 0:
            eps = rng.standard_normal(values.shape, dtype=np.float32)
            values = values + np.float32(posterior_temperature) * posterior[..., 1] * eps
        latents[g][..., group.variates] = values
        masks[g][group.variates] = 1.0
    return latents, masks


def decoding_batches(num_images: int, batch_size: int) -> list[slice]:
    """Consecutive rows of the encodings file, `batch_size` at a time."""
    return [slice(start, min(start + batch_size, num_images)) for start in range(0, num_images, batch_size)]


def encodings_rows(encodings: Encodings, rows: slice) -> Encodings:
    """The encodings of images `rows` only (views of the arrays, no copy)."""
    return Encodings(encodings.file_names[rows],
                     {g: GroupEncoding(group.variates, group.posterior[rows]) for g, group in encodings.groups.items()})


def interpolate_encodings(encodings: Encodings, name_a: str, name_b: str, steps: int) -> Encodings:
    """`steps` encodings on the straight line from image `name_a`'s to `name_b`'s (both ends included).

    Means and standard deviations are interpolated linearly (float32);
    image i is named `<stem a>~<stem b>-<i>` (stems without extension, '/' as '_'). Decode the result like any
    encodings (posterior means by default).
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the two ends), got {steps}")
    a, b = encodings.for_image(name_a), encodings.for_image(name_b)
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None, None, None, None]
    groups = {g: GroupEncoding(group.variates, (1 - weights) * a[g][None] + weights * b[g][None])
              for g, group in encodings.groups.items()}
    flat = lambda name: image_stem(name).replace("/", "_")  # noqa: E731
    return Encodings([f"{flat(name_a)}~{flat(name_b)}-{i}" for i in range(steps)], groups)


DecodePart = Callable[[Encodings, Sequence[float], np.random.Generator, int], np.ndarray]


def write_decoded_images(hp: Any, encodings: Encodings, output_dir: str | Path, num_levels: int,
                         decode_part: DecodePart, progress: Callable[[Iterable, str], Iterable]) -> list[Path]:
    """Decoding mode's files: `<output_dir>/<setting folder>/<image stem>.png` for every image of `encodings` and
    temperature setting, plus a grid per setting; returns the folders. `output_dir` None decodes and
    writes nothing (the processes other than the first of a multi-device run).

    `decode_part(part, temperatures, rng, batch_index)` gives uint8 images of the rows `part` (one framework's
    model). Every setting restarts the posterior samples' generator, so settings differ in the pruned
    variates' temperatures only.
    """
    settings = hp.synthesis.temperature_settings
    folders = []
    for index, (setting, temperatures) in enumerate(zip(settings, expand_temperature_settings(settings, num_levels))):
        writing = output_dir is not None
        folder = Path(output_dir or ".") / temperature_folder_name(index, setting)
        grid = SampleGrid(decoding_grid_path(output_dir, folder.name)) if writing else None
        rng = posterior_sample_rng(hp.run.seed)
        batches = decoding_batches(len(encodings.file_names), hp.synthesis.batch_size)
        for batch_index, rows in enumerate(progress(batches, f"decoding {folder.name}")):
            part = encodings_rows(encodings, rows)
            images = decode_part(part, temperatures, rng, batch_index)
            if not writing:
                continue
            grid.add(images)
            for name, image in zip(part.file_names, images):
                write_png(folder / f"{image_stem(name)}.png", image)
        if writing:
            grid.write()
        folders.append(folder)
    return folders
