"""The five inference modes of PyTorch Efficient-VDVAE (SPEC.md section 8).

Each mode is one function taking the config, a loaded model and its device:
`reconstruct`, `generate`, `compute_div_stats`, `encode`, `decode`
(`decode_encodings` is its programmatic form). `run_synthesis`
loads the run's checkpoint and dispatches on `synthesis.synthesis_mode`;
synthesize.py is the command-line entry around it.

Outputs live in the run's `logs-<name>/` folder (relative to the working
directory, like training): `synthesis-images/reconstructed/`,
`synthesis-images/generated/<setting>/`, `latents/div_stats.npy`,
`latents/encodings.npz`, `synthesis-images/decoded/<setting>/`.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from efficient_vdvae_common.encodings import Encodings, EncodingsBuilder
from efficient_vdvae_common.importance_sampling import batch_bound_sum, group_shapes, sample_passes
from efficient_vdvae_common.image_grids import (ReconstructionGrid, SampleGrid, generation_grid_path,
                                                reconstruction_grid_path)
from efficient_vdvae_common.generation_fid import fid_weights, generated_folders, write_generation_fids
from efficient_vdvae_common.images import model_space_to_uint8, write_png
from efficient_vdvae_common.latent_decoding import (decoding_batches, decoding_inputs, load_encodings_for_decoding,
                                                    posterior_sample_rng, write_decoded_images)
from efficient_vdvae_common.model_health import check_finite_outputs, check_finite_weights, describe_images
from efficient_vdvae_common.synthesis_files import (
    ReconstructionMetrics,
    load_run_div_stats,
    generated_image_name,
    image_stem,
    needs_variate_masks,
    run_mode,
    temperature_folder_name,
)
from efficient_vdvae_common.temperatures import expand_temperature_settings
from efficient_vdvae_common.variate_masks import variate_masks
from efficient_vdvae_torch.checkpoints import CheckpointError, checkpoint_path, load_checkpoint
from efficient_vdvae_torch.data import create_dataloader
from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_torch.model.latent_layers import gaussian_std
from efficient_vdvae_torch.model.losses import kl_per_variate
from efficient_vdvae_torch.model.output_distribution import MNIST_CROP, render_output
from efficient_vdvae_torch.model.output_distribution import bernoulli_log_prob, mol_log_prob
from efficient_vdvae_torch.model.ssim import ssim_per_image
from hparams.saved_run import logs_dir



def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Every random draw of a mode (latent noise, output samples) follows run.seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    print(f"loaded {which} weights from {path} (step {int(state['global_step'])})", flush=True)
    return model.eval().requires_grad_(False)


def _checkpoint_name(hp: Any) -> str:
    return str(checkpoint_path(hp.run.name))


def _all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def load_variate_masks(hp: Any, model: UniversalAutoEncoder, root: str | Path = ".") -> np.ndarray:
    """(L, variates) boolean masks from the run's div_stats.npy (SPEC section 8)."""
    div_stats = load_run_div_stats(logs_dir(hp.run.name, root), model.num_groups, hp.model.down_latent_variates[0])
    return variate_masks(div_stats, hp.synthesis.variate_masks_quantile)


def _progress(loader, description: str):
    # disable=None: a bar on a terminal, silent in logs and pipes.
    return tqdm(loader, desc=description, unit="batch", disable=None, dynamic_ncols=True)


def _to_uint8_images(images: torch.Tensor, binarized: bool) -> np.ndarray:
    """(B, C, H, W) model-space images -> (B, H, W, C) uint8."""
    return model_space_to_uint8(images.permute(0, 2, 3, 1).float().cpu().numpy(), binarized)


@torch.no_grad()
def reconstruct(hp: Any, model: UniversalAutoEncoder, device: torch.device, output_dir: str | Path,
                masks: np.ndarray | None = None, posterior_temperature: float = 1.0) -> ReconstructionMetrics:
    """Encode and decode the synthesis set; write `<name>.png` (and `<name>-target.png`) per image.

    The metrics are those of evaluation (beta 1, no gamma balancing) with z
    sampled from the posterior as in training; `masks` replace masked-off
    variates by prior samples (temperature 1, independent noise), whose KL
    then counts zero. `posterior_temperature=0` decodes the posterior means instead.
    """
    output_dir = Path(output_dir)
    dist = model.output_distribution
    binarized = dist.bernoulli
    mask_list = None if masks is None else [torch.as_tensor(m, dtype=torch.float32) for m in masks]
    totals = {"nelbo": 0.0, "recon": 0.0, "kl_div": 0.0, "ssim": 0.0, "iw_nll": 0.0}
    count = 0
    num_samples = hp.synthesis.num_importance_samples
    # Its own stream: the ELBO pass draws the same noise whatever K is.
    iw_generator = torch.Generator().manual_seed(hp.run.seed)
    grid = ReconstructionGrid(reconstruction_grid_path(output_dir))
    for x, names in _progress(create_dataloader(hp, "synthesis", with_names=True), "reconstruction"):
        x = x.to(device)
        logits, posterior_stats, prior_stats = model(x, variate_masks=mask_list,
                                                     posterior_temperature=posterior_temperature)
        loss = compute_loss(hp, x, logits, posterior_stats, prior_stats, step=None, variate_masks=mask_list)
        check_finite_outputs(_all_finite(logits, loss.nelbo),
                             f"the reconstruction of {describe_images(list(names))}", _checkpoint_name(hp))
        outputs = render_output(logits, dist, hp.synthesis.output_sampling, hp.synthesis.output_temperature)
        batch = x.shape[0]
        # Batch means times batch size: an uneven last batch weighs what its images weigh.
        totals["nelbo"] += loss.nelbo.item() * batch
        totals["recon"] += loss.recon_report.item() * batch
        totals["kl_div"] += loss.kl_div.item() * batch
        targets = x[:, :, MNIST_CROP, MNIST_CROP] if binarized else x
        if not binarized:
            totals["ssim"] += ssim_per_image(targets * 127.5 + 127.5, outputs * 127.5 + 127.5).sum().item()
        if num_samples > 1:
            log_weights = importance_log_weights(hp, model, x, num_samples, hp.synthesis.batch_size, iw_generator)
            what = f"the importance weights of {describe_images(list(names))}"
            totals["iw_nll"] += batch_bound_sum(log_weights, hp, what, _checkpoint_name(hp))
        count += batch

        output_images = _to_uint8_images(outputs, binarized)
        target_images = _to_uint8_images(targets, binarized)
        grid.add(target_images, output_images)
        for name, output, target in zip(names, output_images, target_images):
            stem = image_stem(name)
            write_png(output_dir / f"{stem}.png", output)
            if hp.synthesis.save_target_in_reconstruction:
                write_png(output_dir / f"{stem}-target.png", target)
    grid.write()
    return ReconstructionMetrics(
        nelbo=totals["nelbo"] / count, recon=totals["recon"] / count, kl_div=totals["kl_div"] / count,
        ssim=None if binarized else totals["ssim"] / count, num_images=count,
        iw_nll=totals["iw_nll"] / count if num_samples > 1 else None, num_importance_samples=num_samples)


def _log_normal(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log N(z; mean, std) (float64)."""
    u = (z - mean) / std
    log_density = -0.5 * u * u - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    return log_density.double().flatten(1).sum(dim=1)


@torch.no_grad()
def importance_log_weights(hp: Any, model: UniversalAutoEncoder, x: torch.Tensor, num_samples: int,
                           rows_per_pass: int, generator: torch.Generator | None = None) -> np.ndarray:
    """(B, K) log weights `log p(x|z_k) + log p(z_k) - log q(z_k|x)` in nats, z_k ~ q(z|x) at temperature 1.

    The B*K (image, sample) rows go through the model in passes of `rows_per_pass`.
    """
    dist = model.output_distribution
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    shapes = group_shapes(hp)
    log_weights = []
    for rows in sample_passes(x.shape[0], num_samples, rows_per_pass):
        xs = x[torch.as_tensor(rows, device=x.device)]
        noise = [torch.randn((len(rows), variates, size, size), generator=generator).to(x.device)
                 for variates, size in shapes]
        logits, posterior, prior = model(xs, noise=noise)
        xs, logits = xs.float(), logits.float()
        log_px = bernoulli_log_prob(xs, logits) if dist.bernoulli else mol_log_prob(xs, logits, dist)
        log_w = log_px.double().flatten(1).sum(dim=1)
        for eps, post, pri in zip(noise, posterior, prior):
            post_std, prior_std = gaussian_std(post, base, beta).float(), gaussian_std(pri, base, beta).float()
            z = eps * post_std + post[0].float()  # the z the model decoded
            log_w += _log_normal(z, pri[0].float(), prior_std) - _log_normal(z, post[0].float(), post_std)
        log_weights.append(log_w.cpu().numpy())
    return np.concatenate(log_weights).reshape(x.shape[0], num_samples)


@torch.no_grad()
def generate(hp: Any, model: UniversalAutoEncoder, device: torch.device, output_dir: str | Path) -> list[Path]:
    """n_generation_batches batches of synthesis.batch_size prior samples per temperature setting.

    Writes `<output_dir>/<setting folder>/image-0000.png`, ...; returns the folders.
    """
    settings = hp.synthesis.temperature_settings
    expanded = expand_temperature_settings(settings, model.num_levels)
    folders = []
    for index, (setting, temperatures) in enumerate(zip(settings, expanded)):
        folder = Path(output_dir) / temperature_folder_name(index, setting)
        grid = SampleGrid(generation_grid_path(output_dir, folder.name))
        image_index = 0
        batches = range(hp.synthesis.n_generation_batches)
        for _ in _progress(batches, f"generation {folder.name}"):
            logits, _ = model.sample_from_prior(hp.synthesis.batch_size, temperatures)
            check_finite_outputs(_all_finite(logits), f"generation {folder.name}", _checkpoint_name(hp))
            images = render_output(logits, model.output_distribution, hp.synthesis.output_sampling,
                                   hp.synthesis.output_temperature)
            uint8_images = _to_uint8_images(images, model.output_distribution.bernoulli)
            grid.add(uint8_images)
            for image in uint8_images:
                write_png(folder / generated_image_name(image_index), image)
                image_index += 1
        grid.write()
        folders.append(folder)
    return folders


@torch.no_grad()
def compute_div_stats(hp: Any, model: UniversalAutoEncoder, device: torch.device) -> np.ndarray:
    """(L, variates): per-variate KL in bits, averaged over the div_stats images and positions."""
    total, count = None, 0
    for x in _progress(create_dataloader(hp, "div_stats"), "div_stats"):
        x = x.to(device)
        _, posterior_stats, prior_stats = model(x)
        batch_kl = kl_per_variate(hp, posterior_stats, prior_stats).double() * x.shape[0]
        check_finite_outputs(_all_finite(batch_kl), "div_stats", _checkpoint_name(hp))
        total = batch_kl if total is None else total + batch_kl
        count += x.shape[0]
    return (total / count).cpu().numpy()


@torch.no_grad()
def encode(hp: Any, model: UniversalAutoEncoder, device: torch.device, masks: np.ndarray,
           posterior_temperature: float = 1.0) -> Encodings:
    """Posterior (mean, std) of the active variates of every train image, per group with any active.

    The forward pass uses the masks (masked-off variates take prior samples),
    so later groups see what masked reconstruction would feed them; its active
    variates are sampled at `posterior_temperature` (0: the posterior means, the
    path that decoding the stored means retraces).
    """
    active = {g: np.flatnonzero(mask) for g, mask in enumerate(masks) if mask.any()}
    builder = EncodingsBuilder(active)
    mask_list = [torch.as_tensor(m, dtype=torch.float32) for m in masks]
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    for x, names in _progress(create_dataloader(hp, "encode", with_names=True), "encoding"):
        x = x.to(device)
        _, posterior_stats, _ = model(x, variate_masks=mask_list, posterior_temperature=posterior_temperature)
        posteriors = {}
        for g, variates in active.items():
            index = torch.as_tensor(variates, device=device)
            mean = posterior_stats[g][0][:, index]
            std = gaussian_std(posterior_stats[g], base, beta)[:, index]
            # (B, n, H, W, 2) -> (B, H, W, n, 2)
            posteriors[g] = torch.stack([mean, std], dim=-1).permute(0, 2, 3, 1, 4).float().cpu().numpy()
        check_finite_outputs(all(np.isfinite(p).all() for p in posteriors.values()),
                             f"the encoding of {describe_images(list(names))}", _checkpoint_name(hp))
        builder.add_batch(list(names), posteriors)
    return builder.build()


@torch.no_grad()
def decode_latents(model: UniversalAutoEncoder, latents: list[np.ndarray], masks: list[np.ndarray],
                   temperatures: list[float] | float, device: torch.device) -> torch.Tensor:
    """Logits from per-group NHWC latents and 0/1 masks (efficient_vdvae_common.latent_decoding)."""
    # contiguous: a channels-last view would take another convolution kernel (other last bits).
    tensors = [torch.as_tensor(z).permute(0, 3, 1, 2).contiguous().to(device) for z in latents]
    return model.decode(tensors, [torch.as_tensor(m) for m in masks], temperatures)


@torch.no_grad()
def decode_encodings(hp: Any, model: UniversalAutoEncoder, device: torch.device, encodings: Encodings,
                     temperatures: list[float] | float = 1.0, posterior_temperature: float = 0.0,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Images (N, H, W, C) uint8 of every image of `encodings`, in its order, synthesis.batch_size at a time.

    Active variates: the stored posterior means (`posterior_temperature` 0) or
    samples of the stored posteriors at that temperature (eps from `rng`,
    default seeded by run.seed); the other variates: prior samples at
    `temperatures` (one per top-level block, or one for all). Images are read
    from the output distribution as synthesis.output_sampling says.
    `encodings` may be edited or built (efficient_vdvae_common.latent_decoding.interpolate_encodings).
    """
    rng = rng if rng is not None else posterior_sample_rng(hp.run.seed)
    shapes = group_shapes(hp)
    dist = model.output_distribution
    images = []
    for rows in decoding_batches(len(encodings.file_names), hp.synthesis.batch_size):
        latents, masks = decoding_inputs(encodings, rows, shapes, posterior_temperature, rng)
        logits = decode_latents(model, latents, masks, temperatures, device)
        check_finite_outputs(_all_finite(logits), f"the decoding of {describe_images(encodings.file_names[rows])}",
                             _checkpoint_name(hp))
        outputs = render_output(logits, dist, hp.synthesis.output_sampling, hp.synthesis.output_temperature)
        images.append(_to_uint8_images(outputs, dist.bernoulli))
    return np.concatenate(images)


def decode(hp: Any, model: UniversalAutoEncoder, device: torch.device, encodings: Encodings,
           output_dir: str | Path) -> list[Path]:
    """Decoding mode (efficient_vdvae_common.latent_decoding.write_decoded_images); returns the folders."""
    def decode_part(part, temperatures, rng, batch_index):
        return decode_encodings(hp, model, device, part, temperatures, hp.synthesis.decoding_posterior_temperature, rng)

    return write_decoded_images(hp, encodings, output_dir, model.num_levels, decode_part, _progress)


def run_synthesis(hp: Any, device: torch.device | None = None, root: str | Path = ".",
                  posterior_temperature: float = 1.0) -> None:
    """Load run `hp.run.name` from `root` and run `synthesis.synthesis_mode`, printing a summary."""
    device = device or default_device()
    run_logs = logs_dir(hp.run.name, root)
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
             decode=lambda output_dir: decode(hp, model, device, encodings, output_dir))
    if inception_weights is not None:
        write_generation_fids(hp, inception_weights, generated_folders(hp, run_logs),
                              synthesis_images(hp, model), str(device))


def synthesis_images(hp: Any, model: UniversalAutoEncoder):
    """The synthesis set as uint8 (N, H, W, C) images, batch by batch, as reconstruction writes its targets."""
    binarized = model.output_distribution.bernoulli
    for x in create_dataloader(hp, "synthesis"):
        yield from _to_uint8_images(x[:, :, MNIST_CROP, MNIST_CROP] if binarized else x, binarized)
