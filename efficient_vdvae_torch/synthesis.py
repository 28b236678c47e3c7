"""The five inference modes of PyTorch Efficient-VDVAE (SPEC.md section 8), on one process or several.

Each mode is one function taking the config, a loaded model and its device:
`reconstruct`, `generate`, `compute_div_stats`, `encode`, `decode`
(`decode_encodings` is its programmatic form). `run_synthesis`
loads the run's checkpoint and dispatches on `synthesis.synthesis_mode`;
synthesize.py is the command-line entry around it (synthesize.sh launches it
with torchrun, one process per GPU).

Outputs live in the run's `logs-<name>/` folder (relative to the working
directory, like training): `synthesis-images/reconstructed/`,
`synthesis-images/generated/<setting>/`, `latents/div_stats.npy`,
`latents/encodings.npz`, `synthesis-images/decoded/<setting>/`.

Under torchrun every global batch (synthesis.batch_size images) is split over
the ranks (efficient_vdvae_common.synthesis_shards; every image exactly once),
each rank's per-image results are gathered in image order, and rank 0 alone
writes files and prints. Every random draw of image i (posterior and prior
eps, output samples) comes from generators seeded by (run.seed, use, i), so
the numbers do not depend on the number of ranks, the batch size or the
order of the batches.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from efficient_vdvae_common.data import DataError, run_split
from efficient_vdvae_common.encodings import Encodings, EncodingsBuilder
from efficient_vdvae_common.architecture import MNIST_CROP, group_shapes
from efficient_vdvae_common.importance_sampling import importance_weighted_nll, nats_to_report_units, sample_passes
from efficient_vdvae_common.image_grids import SampleGrid, generation_grid_path
from efficient_vdvae_common.generation_fid import fid_weights, generated_folders, write_generation_fids
from efficient_vdvae_common.images import model_space_to_uint8, write_png
from efficient_vdvae_common.latent_decoding import (decoding_batches, decoding_inputs, load_encodings_for_decoding,
                                                    posterior_sample_rng, write_decoded_images)
from efficient_vdvae_common.model_health import check_finite_outputs, check_finite_weights, describe_images
from efficient_vdvae_common.noise_streams import stream_seed
from efficient_vdvae_common.synthesis_files import (
    ReconstructionFiles,
    ReconstructionMetrics,
    load_run_div_stats,
    generated_image_name,
    needs_variate_masks,
    run_mode,
    temperature_folder_name,
)
from efficient_vdvae_common.synthesis_shards import (GENERATION_OUTPUT_STREAM, GENERATION_STREAM, IMPORTANCE_STREAM,
                                                     MASKED_PRIOR_STREAM, OUTPUT_STREAM, POSTERIOR_STREAM, ShardData,
                                                     shard_data, sharded_batches)
from efficient_vdvae_common.temperatures import expand_temperature_settings
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_common.variate_masks import variate_masks
from efficient_vdvae_torch.checkpoints import checkpoint_path, load_checkpoint
from efficient_vdvae_torch.data.official import load_official_images
from efficient_vdvae_torch.distributed import gather_from_ranks, init_distributed, is_main_process, rank_and_world
from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_torch.model.latent_layers import gaussian_std
from efficient_vdvae_torch.model.losses import kl_per_variate
from efficient_vdvae_torch.model.output_distribution import render_output
from efficient_vdvae_torch.model.output_distribution import bernoulli_log_prob, mol_log_prob
from efficient_vdvae_torch.model.ssim import ssim_per_image
from hparams.saved_run import logs_dir


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """The global generators, for any draw left to them (the modes draw from per-image generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- Ranks: which share of every batch this process computes.

def _my_shards() -> range:
    rank, _ = rank_and_world()
    return range(rank, rank + 1)


def sharded_split(hp: Any, split: str) -> Iterator[ShardData]:
    """The global batches of `split` (synthesis.batch_size images each) as this rank sees them: its rows only,
    with the names of every image of the batch."""
    _, world = rank_and_world()
    workers = max(1, int(hp.run.num_cpus))
    return shard_data(run_split(hp, split, load_official_images), hp.synthesis.batch_size, world, _my_shards(),
                      workers)


def _local_images(data: ShardData, device: torch.device) -> torch.Tensor:
    """This rank's real images of a batch as (n, C, H, W) on `device` (n may be 0)."""
    return torch.from_numpy(np.ascontiguousarray(data.x[data.mask])).permute(0, 3, 1, 2).contiguous().to(device)


# ---- Per-image randomness (efficient_vdvae_common.noise_streams.stream_seed).

def image_generator(seed: int, stream: int, index: int, device: torch.device, *more: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, stream, index, *more))
    return generator


def image_noise(hp: Any, stream: int, images: range | list, device: torch.device,
                keys: list[tuple[int, ...]] | None = None) -> list[torch.Tensor]:
    """Standard-normal eps per latent group, (len(images), C, H, W), row r drawn from image images[r]'s
    generator (with `keys[r]` appended to its seed when given): the same rows on any number of ranks."""
    shapes = group_shapes(hp)
    rows = []
    for r, index in enumerate(images):
        generator = image_generator(hp.run.seed, stream, int(index), device, *(keys[r] if keys else ()))
        rows.append([torch.randn((1, variates, size, size), generator=generator, device=device)
                     for variates, size in shapes])
    return [torch.cat(group) for group in zip(*rows)]


def render_images(hp: Any, logits: torch.Tensor, dist_: Any, stream: int, images: range | list) -> torch.Tensor:
    """The images synthesis writes (synthesis.output_sampling), each sample from its image's generator."""
    sampling, temperature = hp.synthesis.output_sampling, hp.synthesis.output_temperature
    if sampling != "sample":
        return render_output(logits, dist_, sampling, temperature)
    return torch.cat([render_output(logits[r:r + 1], dist_, sampling, temperature,
                                    image_generator(hp.run.seed, stream, int(index), logits.device))
                      for r, index in enumerate(images)])


# ---- Loading.

def load_synthesis_model(hp: Any, device: torch.device, root: str | Path = ".") -> UniversalAutoEncoder:
    """The run's model in eval mode, with its EMA weights when synthesis.load_ema_weights."""
    path = checkpoint_path(hp.run.name, root)
    state = load_checkpoint(path, map_location=device)
    if state is None:
        raise CheckpointError(f"no checkpoint {path} (resolved to {Path(path).resolve()}): train run "
                              f"'{hp.run.name}' first, and run synthesis from the folder that holds it")
    key = "ema_model_state_dict" if hp.synthesis.load_ema_weights else "model_state_dict"
    model = UniversalAutoEncoder(hp).to(device)
    try:
        model.load_state_dict(state[key])
    except RuntimeError as error:
        detail = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit the configured model ({detail})") from None
    which = "EMA" if hp.synthesis.load_ema_weights else "trained"
    check_finite_weights(((name, int((~torch.isfinite(t)).sum()), t.numel())
                          for name, t in model.state_dict().items() if t.is_floating_point()), str(path), which)
    if is_main_process():
        print(f"loaded {which} weights from {path} (step {int(state['global_step'])}) "
              f"on {rank_and_world()[1]} rank(s)", flush=True)
    return model.eval().requires_grad_(False)


def _checkpoint_name(hp: Any) -> str:
    return str(checkpoint_path(hp.run.name))


def _all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_all_ranks(finite: list[bool], what: str, hp: Any) -> None:
    # Every rank raises together (no rank left waiting in a collective).
    check_finite_outputs(all(finite), what, _checkpoint_name(hp))


def load_variate_masks(hp: Any, model: UniversalAutoEncoder, root: str | Path = ".") -> np.ndarray:
    """(L, variates) boolean masks from the run's div_stats.npy (SPEC section 8)."""
    div_stats = load_run_div_stats(logs_dir(hp.run.name, root), model.num_groups, hp.model.down_latent_variates[0])
    return variate_masks(div_stats, hp.synthesis.variate_masks_quantile)


def _progress(loader, description: str, total: int | None = None):
    # disable=None: a bar on a terminal, silent in logs and pipes; rank 0 only.
    return tqdm(loader, desc=description, unit="batch", total=total, dynamic_ncols=True,
                disable=None if is_main_process() else True)


def _to_uint8_images(images: torch.Tensor, binarized: bool) -> np.ndarray:
    """(B, C, H, W) model-space images -> (B, H, W, C) uint8."""
    return model_space_to_uint8(images.permute(0, 2, 3, 1).float().cpu().numpy(), binarized)


def _image_rows(stats: list, r: int) -> list:
    return [tuple(t[r:r + 1] for t in group) for group in stats]


@torch.no_grad()
def reconstruct(hp: Any, model: UniversalAutoEncoder, device: torch.device, output_dir: str | Path | None,
                masks: np.ndarray | None = None, posterior_temperature: float = 1.0) -> ReconstructionMetrics:
    """Encode and decode the synthesis set; write `<name>.png` (and `<name>-target.png`) per image.

    The metrics are those of evaluation (beta 1, no gamma balancing) with z
    sampled from the posterior as in training; `masks` replace masked-off
    variates by prior samples (temperature 1, independent noise), whose KL
    then counts zero. `posterior_temperature=0` decodes the posterior means instead.
    Every image's values come from its own loss; the means are sums over images in
    image order / count. Rank 0 writes the files (none with `output_dir` None).
    """
    writing = output_dir is not None and is_main_process()
    dist_ = model.output_distribution
    binarized = dist_.bernoulli
    no_ssim = binarized
    mask_list = None if masks is None else [torch.as_tensor(m, dtype=torch.float32) for m in masks]
    num_samples = hp.synthesis.num_importance_samples
    totals, count = np.zeros(5), 0  # NELBO, reconstruction, KL, SSIM, IW bound: sums over images
    files = ReconstructionFiles(output_dir, hp.synthesis.save_target_in_reconstruction) if writing else None
    shards = _my_shards()
    for data in _progress(sharded_split(hp, "synthesis"), "reconstruction"):
        images = data.batch.images(shards)
        x = _local_images(data, device)
        part = {"values": np.zeros((0, 5)), "outputs": None, "targets": None, "finite": True, "iw_finite": True}
        if len(images):
            noise = image_noise(hp, POSTERIOR_STREAM, images, device) if posterior_temperature > 0 else None
            prior_noise = image_noise(hp, MASKED_PRIOR_STREAM, images, device) if masks is not None else None
            logits, posterior_stats, prior_stats = model(x, variate_masks=mask_list,
                                                         posterior_temperature=posterior_temperature, noise=noise,
                                                         prior_noise=prior_noise)
            losses = [compute_loss(hp, x[r:r + 1], logits[r:r + 1], _image_rows(posterior_stats, r),
                                   _image_rows(prior_stats, r), step=None, variate_masks=mask_list)
                      for r in range(len(images))]
            values = np.array([[loss.nelbo.item(), loss.recon_report.item(), loss.kl_div.item(), 0.0, 0.0]
                               for loss in losses], np.float64)
            outputs = render_images(hp, logits, dist_, OUTPUT_STREAM, images)
            targets = x[:, :, MNIST_CROP, MNIST_CROP] if binarized else x
            if not no_ssim:
                values[:, 3] = ssim_per_image(targets * 127.5 + 127.5, outputs * 127.5 + 127.5).double().cpu().numpy()
            if num_samples > 1:
                log_weights = importance_log_weights(hp, model, x, num_samples, hp.synthesis.batch_size,
                                                     images=images)
                part["iw_finite"] = bool(np.isfinite(np.max(log_weights, axis=1)).all())
                if part["iw_finite"]:
                    values[:, 4] = nats_to_report_units(importance_weighted_nll(log_weights), hp)
            part.update(values=values, finite=bool(np.isfinite(values[:, :3]).all()) and _all_finite(logits))
            if part["finite"]:  # images of a broken model are never written
                part.update(outputs=_to_uint8_images(outputs, binarized), targets=_to_uint8_images(targets, binarized))
        parts = gather_from_ranks(part)
        _check_all_ranks([p["finite"] for p in parts], f"the reconstruction of {describe_images(data.names)}", hp)
        _check_all_ranks([p["iw_finite"] for p in parts],
                         f"the importance weights of {describe_images(data.names)}", hp)
        # Rank order is image order: the sums are those of one process.
        for p in parts:
            totals += p["values"].sum(axis=0)
            count += len(p["values"])
        if not writing:
            continue
        output_images = np.concatenate([p["outputs"] for p in parts if p["outputs"] is not None])
        target_images = np.concatenate([p["targets"] for p in parts if p["targets"] is not None])
        files.add(data.names, target_images, output_images)
    if count == 0:
        raise DataError(f"the synthesis set ({hp.data.synthesis_data_path}) has no images")
    if files is not None:
        files.write_grid()
    nelbo, recon, kl_div, ssim, iw_nll = (totals / count).tolist()
    return ReconstructionMetrics(
        nelbo=nelbo, recon=recon, kl_div=kl_div, ssim=None if no_ssim else ssim, num_images=count,
        iw_nll=iw_nll if num_samples > 1 else None, num_importance_samples=num_samples)


def _log_normal(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log N(z; mean, std) (float64)."""
    u = (z - mean) / std
    log_density = -0.5 * u * u - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    return log_density.double().flatten(1).sum(dim=1)


@torch.no_grad()
def importance_log_weights(hp: Any, model: UniversalAutoEncoder, x: torch.Tensor, num_samples: int,
                           rows_per_pass: int, generator: torch.Generator | None = None,
                           images: range | list | None = None) -> np.ndarray:
    """(B, K) log weights `log p(x|z_k) + log p(z_k) - log q(z_k|x)` in nats, z_k ~ q(z|x) at temperature 1.

    The B*K (image, sample) rows go through the model in passes of `rows_per_pass`. With `images`
    (the global index of each image of `x`) sample k of image i draws its eps from the generator of
    (run.seed, i, k), the same in any batch or rank; else from `generator`.
    """
    dist_ = model.output_distribution
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    shapes = group_shapes(hp)
    log_weights = []
    start = 0
    for rows in sample_passes(x.shape[0], num_samples, rows_per_pass):
        xs = x[torch.as_tensor(rows, device=x.device)]
        if images is not None:
            samples = [(k % num_samples,) for k in range(start, start + len(rows))]
            noise = image_noise(hp, IMPORTANCE_STREAM, [images[r] for r in rows], x.device, samples)
        else:
            noise = [torch.randn((len(rows), variates, size, size), generator=generator).to(x.device)
                     for variates, size in shapes]
        start += len(rows)
        logits, posterior, prior = model(xs, noise=noise)
        xs, logits = xs.float(), logits.float()
        log_px = bernoulli_log_prob(xs, logits) if dist_.bernoulli else mol_log_prob(xs, logits, dist_)
        log_w = log_px.double().flatten(1).sum(dim=1)
        for eps, post, pri in zip(noise, posterior, prior):
            post_std, prior_std = gaussian_std(post, base, beta).float(), gaussian_std(pri, base, beta).float()
            z = eps * post_std + post[0].float()  # the z the model decoded
            log_w += _log_normal(z, pri[0].float(), prior_std) - _log_normal(z, post[0].float(), post_std)
        log_weights.append(log_w.cpu().numpy())
    return np.concatenate(log_weights).reshape(x.shape[0], num_samples)


@torch.no_grad()
def generate(hp: Any, model: UniversalAutoEncoder, device: torch.device, output_dir: str | Path | None) -> list[Path]:
    """n_generation_batches batches of synthesis.batch_size prior samples per temperature setting.

    Writes `<output_dir>/<setting folder>/image-0000.png`, ... (rank 0; nothing with `output_dir` None);
    returns the folders. Image i's eps are the same for every setting.
    """
    writing = output_dir is not None and is_main_process()
    settings = hp.synthesis.temperature_settings
    expanded = expand_temperature_settings(settings, model.num_levels)
    batch_size = hp.synthesis.batch_size
    _, world = rank_and_world()
    batches = sharded_batches(hp.synthesis.n_generation_batches * batch_size, batch_size, world)
    shards = _my_shards()
    folders = []
    for index, (setting, temperatures) in enumerate(zip(settings, expanded)):
        folder = Path(output_dir or ".") / temperature_folder_name(index, setting)
        grid = SampleGrid(generation_grid_path(output_dir, folder.name)) if writing else None
        for batch in _progress(batches, f"generation {folder.name}"):
            images = batch.images(shards)
            part = {"images": None, "finite": True}
            if len(images):
                noise = image_noise(hp, GENERATION_STREAM, images, device)
                logits, _ = model.sample_from_prior(len(images), temperatures, noise=noise)
                outputs = render_images(hp, logits, model.output_distribution, GENERATION_OUTPUT_STREAM, images)
                finite = _all_finite(logits)
                part = {"images": _to_uint8_images(outputs, model.output_distribution.bernoulli) if finite else None,
                        "finite": finite}
            parts = gather_from_ranks(part)
            _check_all_ranks([p["finite"] for p in parts], f"generation {folder.name}", hp)
            if not writing:
                continue
            uint8_images = np.concatenate([p["images"] for p in parts if p["images"] is not None])
            grid.add(uint8_images)
            for image_index, image in zip(range(batch.first, batch.first + batch.size), uint8_images):
                write_png(folder / generated_image_name(image_index), image)
        if grid is not None:
            grid.write()
        folders.append(folder)
    return folders


@torch.no_grad()
def compute_div_stats(hp: Any, model: UniversalAutoEncoder, device: torch.device) -> np.ndarray:
    """(L, variates): per-variate KL in bits, averaged over the div_stats images and positions."""
    total, count = 0.0, 0
    shards = _my_shards()
    for data in _progress(sharded_split(hp, "div_stats"), "div_stats"):
        images = data.batch.images(shards)
        part = {"kl": [], "finite": True}
        if len(images):
            x = _local_images(data, device)
            _, posterior_stats, prior_stats = model(x, noise=image_noise(hp, POSTERIOR_STREAM, images, device))
            kl = kl_per_variate(hp, posterior_stats, prior_stats).double().cpu()
            part = {"kl": list(kl.numpy()), "finite": _all_finite(kl)}
        parts = gather_from_ranks(part)
        _check_all_ranks([p["finite"] for p in parts], "div_stats", hp)
        for p in parts:  # image order
            for kl in p["kl"]:
                total = total + kl
                count += 1
    return np.asarray(total / count)


@torch.no_grad()
def encode(hp: Any, model: UniversalAutoEncoder, device: torch.device, masks: np.ndarray,
           posterior_temperature: float = 1.0) -> Encodings:
    """Posterior (mean, std) of the active variates of every train image, per group with any active.

    The forward pass uses the masks (masked-off variates take prior samples),
    so later groups see what masked reconstruction would feed them; its active
    variates are sampled at `posterior_temperature` (0: the posterior means, the
    path that decoding the stored means retraces). Every rank gets every image's posteriors, in order.
    """
    active = {g: np.flatnonzero(mask) for g, mask in enumerate(masks) if mask.any()}
    builder = EncodingsBuilder(active)
    mask_list = [torch.as_tensor(m, dtype=torch.float32) for m in masks]
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    shards = _my_shards()
    for data in _progress(sharded_split(hp, "encode"), "encoding"):
        images = data.batch.images(shards)
        part = {"posteriors": None, "finite": True}
        if len(images):
            x = _local_images(data, device)
            noise = image_noise(hp, POSTERIOR_STREAM, images, device) if posterior_temperature > 0 else None
            _, posterior_stats, _ = model(x, variate_masks=mask_list, posterior_temperature=posterior_temperature,
                                          noise=noise, prior_noise=image_noise(hp, MASKED_PRIOR_STREAM, images, device))
            posteriors = {}
            for g, variates in active.items():
                index = torch.as_tensor(variates, device=device)
                mean = posterior_stats[g][0][:, index]
                std = gaussian_std(posterior_stats[g], base, beta)[:, index]
                # (B, n, H, W, 2) -> (B, H, W, n, 2)
                posteriors[g] = torch.stack([mean, std], dim=-1).permute(0, 2, 3, 1, 4).float().cpu().numpy()
            part = {"posteriors": posteriors, "finite": all(np.isfinite(p).all() for p in posteriors.values())}
        parts = gather_from_ranks(part)
        _check_all_ranks([p["finite"] for p in parts], f"the encoding of {describe_images(data.names)}", hp)
        pieces = [p["posteriors"] for p in parts if p["posteriors"] is not None]
        builder.add_batch(data.names, {g: np.concatenate([piece[g] for piece in pieces]) for g in active})
    return builder.build()


@torch.no_grad()
def decode_latents(model: UniversalAutoEncoder, latents: list[np.ndarray], masks: list[np.ndarray],
                   temperatures: list[float] | float, device: torch.device,
                   prior_noise: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits from per-group NHWC latents and 0/1 masks (efficient_vdvae_common.latent_decoding)."""
    # contiguous: a channels-last view would take another convolution kernel (other last bits).
    tensors = [torch.as_tensor(z).permute(0, 3, 1, 2).contiguous().to(device) for z in latents]
    return model.decode(tensors, [torch.as_tensor(m) for m in masks], temperatures, prior_noise)


@torch.no_grad()
def decode_encodings(hp: Any, model: UniversalAutoEncoder, device: torch.device, encodings: Encodings,
                     temperatures: list[float] | float = 1.0, posterior_temperature: float = 0.0,
                     rng: np.random.Generator | None = None, first_image: int = 0) -> np.ndarray:
    """Images (N, H, W, C) uint8 of every image of `encodings`, in its order, synthesis.batch_size at a time.

    Active variates: the stored posterior means (`posterior_temperature` 0) or
    samples of the stored posteriors at that temperature (eps from `rng`,
    default seeded by run.seed); the other variates: prior samples at
    `temperatures` (one per top-level block, or one for all), eps per image
    (image i of `encodings` is image `first_image + i` of the noise streams). Images are read
    from the output distribution as synthesis.output_sampling says.
    `encodings` may be edited or built (efficient_vdvae_common.latent_decoding.interpolate_encodings).
    Under torchrun each rank decodes its rows and every rank gets every image.
    """
    rng = rng if rng is not None else posterior_sample_rng(hp.run.seed)
    shapes = group_shapes(hp)
    dist_ = model.output_distribution
    _, world = rank_and_world()
    shards = _my_shards()
    images_out = []
    for rows in decoding_batches(len(encodings.file_names), hp.synthesis.batch_size):
        # Every rank draws the whole batch's inputs (the same numpy draws) and decodes its share.
        latents, masks = decoding_inputs(encodings, rows, shapes, posterior_temperature, rng)
        [batch] = sharded_batches(len(latents[0]), hp.synthesis.batch_size, world)
        mine = batch.rows(shards)
        part = {"images": None, "finite": True}
        if len(mine):
            indices = [first_image + rows.start + r for r in mine]
            logits = decode_latents(model, [z[mine.start:mine.stop] for z in latents], masks, temperatures, device,
                                    image_noise(hp, MASKED_PRIOR_STREAM, indices, device))
            outputs = render_images(hp, logits, dist_, OUTPUT_STREAM, indices)
            finite = _all_finite(logits)
            part = {"images": _to_uint8_images(outputs, dist_.bernoulli) if finite else None, "finite": finite}
        parts = gather_from_ranks(part)
        _check_all_ranks([p["finite"] for p in parts],
                         f"the decoding of {describe_images(encodings.file_names[rows])}", hp)
        images_out.append(np.concatenate([p["images"] for p in parts if p["images"] is not None]))
    return np.concatenate(images_out)


def decode(hp: Any, model: UniversalAutoEncoder, device: torch.device, encodings: Encodings,
           output_dir: str | Path | None) -> list[Path]:
    """Decoding mode (efficient_vdvae_common.latent_decoding.write_decoded_images); returns the folders."""
    batch_size = hp.synthesis.batch_size

    def decode_part(part, temperatures, rng, batch_index):
        return decode_encodings(hp, model, device, part, temperatures, hp.synthesis.decoding_posterior_temperature,
                                rng, first_image=batch_index * batch_size)

    return write_decoded_images(hp, encodings, output_dir if is_main_process() else None, model.num_levels,
                                decode_part, _progress)


def run_synthesis(hp: Any, device: torch.device | None = None, root: str | Path = ".",
                  posterior_temperature: float = 1.0) -> None:
    """Load run `hp.run.name` from `root` and run `synthesis.synthesis_mode`, printing a summary.

    Under torchrun (after init_distributed) every rank runs it: each computes its share, rank 0 writes.
    """
    device = device or default_device()
    run_logs = logs_dir(hp.run.name, root)
    main = is_main_process()
    # Missing FID weights stop here, before any generation work.
    inception_weights = fid_weights(hp)
    model = load_synthesis_model(hp, device, root)
    # Masks and encodings come before any output so that a missing file leaves nothing half-written.
    masks = load_variate_masks(hp, model, root) if needs_variate_masks(hp) else None
    encodings = (load_encodings_for_decoding(hp, run_logs, group_shapes(hp))
                 if hp.synthesis.synthesis_mode == "decoding" else None)
    seed_everything(hp.run.seed)
    run_mode(hp, run_logs, masks,
             reconstruct=lambda output_dir, masks: reconstruct(hp, model, device, output_dir, masks,
                                                               posterior_temperature),
             generate=lambda output_dir: generate(hp, model, device, output_dir),
             compute_div_stats=lambda: compute_div_stats(hp, model, device),
             encode=lambda masks: encode(hp, model, device, masks, posterior_temperature),
             decode=lambda output_dir: decode(hp, model, device, encodings, output_dir),
             main_process=main)
    if inception_weights is not None and main:
        write_generation_fids(hp, inception_weights, generated_folders(hp, run_logs),
                              synthesis_images(hp, model), str(device))


def synthesis_images(hp: Any, model: UniversalAutoEncoder):
    """The synthesis set as uint8 (N, H, W, C) images, batch by batch, as reconstruction writes its targets."""
    binarized = model.output_distribution.bernoulli
    for data in shard_data(run_split(hp, "synthesis", load_official_images), hp.synthesis.batch_size,
                                 1, range(1)):
        x = data.x[data.mask]
        yield from model_space_to_uint8(x[:, MNIST_CROP, MNIST_CROP] if binarized else x, binarized)


def init_synthesis_ranks(hp: Any) -> torch.device:
    """Join torchrun's process group (if launched by it) and return this rank's device."""
    return init_distributed(hp.run.distributed_timeout_seconds).device
