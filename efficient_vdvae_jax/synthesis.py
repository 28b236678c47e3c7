"""The five inference modes of JAX Efficient-VDVAE (SPEC.md section 8), over every device.

Each mode is one function taking the config, the model and its parameters:
`reconstruct`, `generate`, `compute_div_stats`, `encode`, `decode`
(`decode_encodings` is its programmatic form); the per-batch work
of each is one jitted function. `run_synthesis` loads the run's checkpoint
and dispatches on `synthesis.synthesis_mode`; synthesize.py is the
command-line entry around it. Outputs and names are those of the PyTorch
implementation (efficient_vdvae_common.synthesis_files).

Every mode runs data-parallel on the mesh of training (all local devices; all
processes' devices when launched as several JAX processes): each global batch
of synthesis.batch_size images is zero-padded to a multiple of the device
count and split over the devices (efficient_vdvae_common.synthesis_shards),
each process reads only its devices' images, the padding rows are masked out,
and process 0 alone writes files. Every batch has the same shape, so every
mode compiles once. Randomness follows run.seed: batch i of a mode uses the
key fold_in(PRNGKey(seed), i) for the whole (padded) global batch; threefry
keys give row r the same numbers in a batch of any length, so an image's
results do not depend on the number of devices. In generation every
temperature setting reuses the same keys, so setting k's image j differs from
setting 0's only by its temperatures.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from efficient_vdvae_common.data import DataError, run_split
from efficient_vdvae_common.encodings import Encodings, EncodingsBuilder
from efficient_vdvae_common.architecture import (MNIST_CROP, group_shapes, is_binarized_mnist, num_latent_groups,
                                                num_levels)
from efficient_vdvae_common.importance_sampling import batch_bound_sum, sample_passes
from efficient_vdvae_common.image_grids import SampleGrid, generation_grid_path
from efficient_vdvae_common.generation_fid import fid_weights, generated_folders, write_generation_fids
from efficient_vdvae_common.images import model_space_to_uint8, write_png
from efficient_vdvae_common.latent_decoding import (decoding_batches, decoding_inputs, load_encodings_for_decoding,
                                                    posterior_sample_rng, write_decoded_images)
from efficient_vdvae_common.model_health import check_finite_outputs, check_finite_weights, describe_images
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_common.synthesis_files import (ReconstructionFiles, ReconstructionMetrics,
                                                    generated_image_name, load_run_div_stats, needs_variate_masks,
                                                    run_mode, temperature_folder_name)
from efficient_vdvae_common.synthesis_shards import ShardData, pad_rows, shard_data, shard_width
from efficient_vdvae_common.temperatures import expand_temperature_settings
from efficient_vdvae_common.training_progress import CheckpointError
from efficient_vdvae_common.variate_masks import variate_masks
from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state, checkpoint_dir
from efficient_vdvae_jax.data.official import load_official_images
from efficient_vdvae_jax.distributed import (data_sharding, global_mesh, is_main_process, local_device_range,
                                             replicate, replicated_sharding, shard_batch, to_host)
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_jax.model.latent_layers import gaussian_std
from efficient_vdvae_jax.model.losses import kl_per_variate
from efficient_vdvae_jax.model.output_distribution import bernoulli_log_prob, mol_log_prob, render_output
from efficient_vdvae_jax.model.ssim import ssim_per_image
from hparams.saved_run import logs_dir

SSIM_WINDOW = 11


def batch_key(seed: int, index: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def synthesis_mesh() -> Mesh:
    """The devices synthesis runs on: the training mesh (every device of every process)."""
    return global_mesh()


def load_synthesis_params(hp: Any, model: UniversalAutoEncoder, root: str | Path = ".",
                          mesh: Mesh | None = None) -> Any:
    """The run's latest parameters, replicated on `mesh` (default: every device): EMA ones when
    synthesis.load_ema_weights."""
    mesh = mesh or synthesis_mesh()
    checkpoints = TrainingCheckpoints(checkpoint_dir(hp.run.name, root), hp.run.max_allowed_checkpoints)
    try:
        if checkpoints.latest() is None:
            raise CheckpointError(f"no checkpoint in {checkpoints.directory}: train run '{hp.run.name}' first, "
                                  "and run synthesis from the folder that holds it")
        state, progress = checkpoints.restore(abstract_train_state(hp, model, replicated_sharding(mesh)))
    finally:
        checkpoints.close()
    which = "EMA" if hp.synthesis.load_ema_weights else "trained"
    params = state.ema_params if hp.synthesis.load_ema_weights else state.params
    check_finite_weights(_non_finite_counts(params), f"{checkpoints.directory} (step {progress.global_step})", which)
    if is_main_process():
        print(f"loaded {which} weights from {checkpoints.directory} (step {progress.global_step}) "
              f"for {mesh.size} device(s)", flush=True)
    return params


def _non_finite_counts(params: Any) -> list[tuple[str, int, int]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(jax.tree_util.keystr(path), int(jnp.sum(~jnp.isfinite(leaf))), int(leaf.size)) for path, leaf in leaves]


def _checkpoint_name(hp: Any) -> str:
    return str(checkpoint_dir(hp.run.name))


def load_variate_masks(hp: Any, root: str | Path = ".") -> np.ndarray:
    """(L, variates) boolean masks from the run's div_stats.npy (SPEC section 8)."""
    div_stats = load_run_div_stats(logs_dir(hp.run.name, root), num_latent_groups(hp),
                                   hp.model.down_latent_variates[0])
    return variate_masks(div_stats, hp.synthesis.variate_masks_quantile)


# ---- Batches on the mesh (efficient_vdvae_common.synthesis_shards).

def sharded_split(hp: Any, split: str, mesh: Mesh) -> Iterator[ShardData]:
    """The global batches of `split` (synthesis.batch_size images each) as this process sees them:
    its devices' rows only (zero-padded), with the names of every image of the batch."""
    return shard_data(run_split(hp, split, load_official_images), hp.synthesis.batch_size, mesh.size,
                      local_device_range(mesh))


def padded_batches(hp: Any, split: str, with_names: bool = False) -> Iterator[tuple]:
    """(x (B, H, W, C), mask (B,), names) per batch of `split` on one device; the last batch zero-padded to B."""
    for data in shard_data(run_split(hp, split, load_official_images), hp.synthesis.batch_size, 1, range(1)):
        yield (data.x, data.mask, data.names) if with_names else (data.x, data.mask)


def padded_size(batch_size: int, mesh: Mesh) -> int:
    """A global batch of `batch_size` rows padded to a multiple of the mesh's devices."""
    return shard_width(batch_size, mesh.size) * mesh.size


def local_rows_to_mesh(mesh: Mesh, local: np.ndarray) -> jax.Array:
    """This process's rows of a global batch (its devices' blocks, in order) -> one array split over the mesh."""
    devices = len(local_device_range(mesh))
    return shard_batch(mesh, np.reshape(local, (devices, -1) + local.shape[1:]))


def host_rows_to_mesh(mesh: Mesh, rows: np.ndarray) -> jax.Array:
    """A whole global batch (the same on every process; rows a multiple of the devices) split over the mesh."""
    width = len(rows) // mesh.size
    mine = local_device_range(mesh)
    return local_rows_to_mesh(mesh, rows[mine.start * width:mine.stop * width])


def on_mesh(mesh: Mesh, tree: Any) -> Any:
    """`tree` replicated on every device of `mesh` (left as it is when it already is)."""
    target = replicated_sharding(mesh)
    leaves = jax.tree.leaves(tree)
    if leaves and all(isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(target, leaf.ndim)
                      for leaf in leaves):
        return tree
    return replicate(mesh, tree)


def _progress(items, description: str, total: int | None = None):
    # disable=None: a bar on a terminal, silent in logs and pipes; process 0 only.
    return tqdm(items, desc=description, total=total, unit="batch", dynamic_ncols=True,
                disable=None if is_main_process() else True)


def _jnp_masks(masks: np.ndarray | None) -> list[jax.Array] | None:
    return None if masks is None else [jnp.asarray(m, jnp.float32) for m in masks]


def render_images(hp: Any, logits: jax.Array, dist: OutputDistribution, rng: jax.Array) -> jax.Array:
    """The images synthesis writes (synthesis.output_sampling, at synthesis.output_temperature)."""
    return render_output(logits, dist, rng, hp.synthesis.output_sampling, hp.synthesis.output_temperature)


def make_reconstruction_step(hp: Any, model: UniversalAutoEncoder) -> Callable:
    """`values, outputs = step(params, rng, x, masks, posterior_temperature)`.

    values: (B, 4) per image NELBO, reconstruction, KL (report units) and SSIM
    (NaN for binarized MNIST and images smaller than the SSIM window); outputs:
    images from the output distribution (synthesis.output_sampling). Every term of the evaluation
    objective is a mean over images, so each image's values come from its own loss.
    """
    no_ssim = is_binarized_mnist(hp) or hp.data.target_res < SSIM_WINDOW
    dist = OutputDistribution.from_hparams(hp)

    def loss_of_one_image(x, logits, posterior, prior, masks):
        add_batch = lambda tree: jax.tree.map(lambda a: a[None], tree)  # noqa: E731
        return compute_loss(hp, x[None], logits[None], add_batch(posterior), add_batch(prior), None,
                            variate_masks=masks)

    def step(params, rng, x, masks, posterior_temperature):
        model_rng, output_rng = jax.random.split(rng)
        logits, posterior, prior = model.apply({"params": params}, model_rng, x, variate_masks=masks,
                                               posterior_temperature=posterior_temperature)
        loss = jax.vmap(loss_of_one_image, in_axes=(0, 0, 0, 0, None))(x, logits, posterior, prior, masks)
        outputs = render_images(hp, logits, dist, output_rng)
        if no_ssim:
            ssim = jnp.full(x.shape[:1], jnp.nan)
        else:
            ssim = ssim_per_image(x * 127.5 + 127.5, outputs * 127.5 + 127.5)
        return jnp.stack([loss.nelbo, loss.recon_report, loss.kl_div, ssim], axis=1), outputs

    return jax.jit(step)


def reconstruct(hp: Any, model: UniversalAutoEncoder, params: Any, output_dir: str | Path | None,
                masks: np.ndarray | None = None, posterior_temperature: float = 1.0,
                mesh: Mesh | None = None) -> ReconstructionMetrics:
    """Encode and decode the synthesis set; write `<name>.png` (and `<name>-target.png`) per image.

    The metrics are those of evaluation (beta 1, no gamma balancing) with z
    sampled from the posterior as in training; `masks` replace masked-off
    variates by prior samples (temperature 1, noise independent of the
    posterior's), whose KL then counts zero. `posterior_temperature=0` decodes
    the posterior means. Runs over `mesh` (default: every device); files are
    written by process 0 only, none with `output_dir` None.
    """
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    writing = output_dir is not None and is_main_process()
    binarized = is_binarized_mnist(hp)
    step = make_reconstruction_step(hp, model)
    mask_arrays = on_mesh(mesh, _jnp_masks(masks))
    totals, count = np.zeros(4), 0
    num_samples, iw_total = hp.synthesis.num_importance_samples, 0.0
    iw_rows = padded_size(hp.synthesis.batch_size, mesh)
    iw_step = make_importance_step(hp, model, iw_rows) if num_samples > 1 else None
    files = ReconstructionFiles(output_dir, hp.synthesis.save_target_in_reconstruction) if writing else None
    for data in _progress(sharded_split(hp, "synthesis", mesh), "reconstruction"):
        names, real = data.names, data.batch.size
        key = batch_key(hp.run.seed, data.batch.index)
        x = local_rows_to_mesh(mesh, data.x)
        values, outputs = step(params, on_mesh(mesh, key), x, mask_arrays, jnp.float32(posterior_temperature))
        # Padding rows come last: the real images are the first `real` rows of the global batch.
        values = np.asarray(to_host(values), np.float64)[:real]
        # NELBO, reconstruction, KL (SSIM is NaN by design for small or binary images).
        check_finite_outputs(bool(np.isfinite(values[:, :3]).all()),
                             f"the reconstruction of {describe_images(names)}", _checkpoint_name(hp))
        totals += values.sum(axis=0)
        count += real
        # Every process takes part in these gathers (collectives across processes).
        x_host = np.asarray(to_host(x))[:real]
        if iw_step is not None:
            # Keys apart from the ELBO pass's: its numbers do not depend on K.
            log_weights = importance_log_weights(iw_step, params, jax.random.fold_in(key, 1), x_host, num_samples,
                                                 hp.synthesis.batch_size, mesh)
            iw_total += batch_bound_sum(log_weights, hp, f"the importance weights of {describe_images(names)}",
                                        _checkpoint_name(hp))
        outputs = np.asarray(to_host(outputs))[:real]
        if not writing:
            continue
        targets = x_host[:, MNIST_CROP, MNIST_CROP] if binarized else x_host
        output_images = model_space_to_uint8(outputs, binarized)
        target_images = model_space_to_uint8(targets, binarized)
        files.add(names, target_images, output_images)
    if count == 0:
        raise DataError(f"the synthesis set ({hp.data.synthesis_data_path}) has no images")
    if files is not None:
        files.write_grid()
    nelbo, recon, kl_div, ssim = (totals / count).tolist()
    return ReconstructionMetrics(nelbo=nelbo, recon=recon, kl_div=kl_div, ssim=None if binarized else ssim,
                                 num_images=count, iw_nll=iw_total / count if iw_step is not None else None,
                                 num_importance_samples=num_samples)


def _log_normal(z: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Per-row sum of log N(z; mean, std)."""
    u = (z - mean) / std
    return jnp.sum(-0.5 * u * u - jnp.log(std) - 0.5 * math.log(2.0 * math.pi), axis=(1, 2, 3))


def make_importance_step(hp: Any, model: UniversalAutoEncoder, rows: int) -> Callable:
    """`log_weights = step(params, rng, xs)`: per row of `xs` (rows, H, W, C) the log weight
    `log p(x|z) + log p(z) - log q(z|x)` in nats of one posterior sample z (temperature 1)."""
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    dist = OutputDistribution.from_hparams(hp)
    shapes = group_shapes(hp)

    def step(params, rng, xs):
        model_rng, noise_rng = jax.random.split(rng)
        noise = [jax.random.normal(key, (rows, size, size, variates), jnp.float32)
                 for key, (variates, size) in zip(jax.random.split(noise_rng, len(shapes)), shapes)]
        logits, posterior, prior = model.apply({"params": params}, model_rng, xs, noise=noise)
        logits = logits.astype(jnp.float32)
        log_px = bernoulli_log_prob(xs, logits) if dist.bernoulli else mol_log_prob(xs, logits, dist)
        log_w = jnp.sum(log_px, axis=(1, 2))
        for eps, post, pri in zip(noise, posterior, prior):
            post = tuple(t.astype(jnp.float32) for t in post)
            pri = tuple(t.astype(jnp.float32) for t in pri)
            post_std, prior_std = gaussian_std(post, base, beta), gaussian_std(pri, base, beta)
            z = eps * post_std + post[0]  # the z the model decoded
            log_w += _log_normal(z, pri[0], prior_std) - _log_normal(z, post[0], post_std)
        return log_w

    return jax.jit(step)




def importance_log_weights(step: Callable, params: Any, rng: jax.Array, x: np.ndarray, num_samples: int,
                           rows_per_pass: int, mesh: Mesh | None = None) -> np.ndarray:
    """(B, K) log weights in nats of K posterior samples per image of `x` (the whole batch, on every process);
    the B*K rows go through `step` (make_importance_step, made for `rows_per_pass` rows padded to a multiple
    of the devices of `mesh`) in passes of `rows_per_pass`, the last one zero-padded."""
    mesh = mesh or synthesis_mesh()
    padded = padded_size(rows_per_pass, mesh)
    log_weights = []
    for index, rows in enumerate(sample_passes(len(x), num_samples, rows_per_pass)):
        xs = host_rows_to_mesh(mesh, pad_rows(np.asarray(x)[rows], padded))
        pass_weights = step(params, on_mesh(mesh, jax.random.fold_in(rng, index)), xs)
        log_weights.append(np.asarray(to_host(pass_weights), np.float64)[:len(rows)])
    return np.concatenate(log_weights).reshape(len(x), num_samples)


def make_generation_step(hp: Any, model: UniversalAutoEncoder, batch_size: int, mesh: Mesh | None = None
                         ) -> Callable:
    """`images, finite = step(params, rng, level_temperatures)`: prior samples and whether their logits
    are finite; one compile for every setting. With `mesh`, the images are split over its devices."""
    dist = OutputDistribution.from_hparams(hp)

    def step(params, rng, level_temperatures):
        latent_rng, output_rng = jax.random.split(rng)
        logits, _ = model.apply({"params": params}, latent_rng, batch_size, level_temperatures,
                                method=model.sample_from_prior)
        return render_images(hp, logits, dist, output_rng), jnp.all(jnp.isfinite(logits))

    if mesh is None:
        return jax.jit(step)
    # The output's layout makes XLA split the whole computation by image.
    return jax.jit(step, out_shardings=(data_sharding(mesh), replicated_sharding(mesh)))


def generate(hp: Any, model: UniversalAutoEncoder, params: Any, output_dir: str | Path | None,
             mesh: Mesh | None = None) -> list[Path]:
    """n_generation_batches batches of synthesis.batch_size prior samples per temperature setting.

    Writes `<output_dir>/<setting folder>/image-0000.png`, ... (process 0 only; nothing with `output_dir`
    None); returns the folders.
    """
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    writing = output_dir is not None and is_main_process()
    settings = hp.synthesis.temperature_settings
    expanded = expand_temperature_settings(settings, num_levels(hp))
    batch_size = hp.synthesis.batch_size
    step = make_generation_step(hp, model, padded_size(batch_size, mesh), mesh)
    binarized = is_binarized_mnist(hp)
    folders = []
    for setting_index, (setting, temperatures) in enumerate(zip(settings, expanded)):
        folder = Path(output_dir or ".") / temperature_folder_name(setting_index, setting)
        grid = SampleGrid(generation_grid_path(output_dir, folder.name)) if writing else None
        image_index = 0
        batches = range(hp.synthesis.n_generation_batches)
        for batch_index in _progress(batches, f"generation {folder.name}"):
            images, finite = step(params, on_mesh(mesh, batch_key(hp.run.seed, batch_index)),
                                  on_mesh(mesh, jnp.asarray(temperatures, jnp.float32)))
            check_finite_outputs(bool(finite), f"generation {folder.name}", _checkpoint_name(hp))
            images = np.asarray(to_host(images))[:batch_size]
            if not writing:
                continue
            uint8_images = model_space_to_uint8(images, binarized)
            grid.add(uint8_images)
            for image in uint8_images:
                write_png(folder / generated_image_name(image_index), image)
                image_index += 1
        if grid is not None:
            grid.write()
        folders.append(folder)
    return folders


def make_div_stats_step(hp: Any, model: UniversalAutoEncoder) -> Callable:
    """`per_image = step(params, rng, x)`: (B, L, variates) KL in bits, averaged over positions."""

    def step(params, rng, x):
        _, posterior, prior = model.apply({"params": params}, rng, x)
        return kl_per_variate(hp, posterior, prior)

    return jax.jit(step)


def compute_div_stats(hp: Any, model: UniversalAutoEncoder, params: Any, mesh: Mesh | None = None) -> np.ndarray:
    """(L, variates): per-variate KL in bits, averaged over the div_stats images and positions."""
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    step = make_div_stats_step(hp, model)
    total, count = 0.0, 0
    for data in _progress(sharded_split(hp, "div_stats", mesh), "div_stats"):
        per_image = step(params, on_mesh(mesh, batch_key(hp.run.seed, data.batch.index)),
                         local_rows_to_mesh(mesh, data.x))
        # Summed on the host in image order: the same sum on any number of devices.
        sums = np.asarray(to_host(per_image), np.float64)[:data.batch.size].sum(axis=0)
        check_finite_outputs(bool(np.isfinite(sums).all()), "div_stats", _checkpoint_name(hp))
        total = total + sums
        count += data.batch.size
    if count == 0:
        raise DataError(f"the div_stats subset of {hp.data.train_data_path} has no images "
                          f"(synthesis.div_stats_subset_ratio = {hp.synthesis.div_stats_subset_ratio})")
    return total / count


def make_encoding_step(hp: Any, model: UniversalAutoEncoder, active: dict[int, np.ndarray]) -> Callable:
    """`posteriors = step(params, rng, x, masks, posterior_temperature)`: group -> (B, H, W, n_active, 2)
    posterior (mean, std)."""
    base, beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta

    def step(params, rng, x, masks, posterior_temperature):
        _, posterior, _ = model.apply({"params": params}, rng, x, variate_masks=masks,
                                      posterior_temperature=posterior_temperature)
        return {g: jnp.stack([posterior[g][0][..., variates], gaussian_std(posterior[g], base, beta)[..., variates]],
                             axis=-1)
                for g, variates in active.items()}

    return jax.jit(step)


def encode(hp: Any, model: UniversalAutoEncoder, params: Any, masks: np.ndarray,
           posterior_temperature: float = 1.0, mesh: Mesh | None = None) -> Encodings:
    """Posterior (mean, std) of the active variates of every train image, per group with any active.

    The forward pass uses the masks (masked-off variates take prior samples),
    so later groups see what masked reconstruction would feed them; its active
    variates are sampled at `posterior_temperature` (0: the posterior means, the
    path that decoding the stored means retraces). Every process gets every image's posteriors.
    """
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    active = {g: np.flatnonzero(mask) for g, mask in enumerate(masks) if mask.any()}
    builder = EncodingsBuilder(active)
    step = make_encoding_step(hp, model, active)
    mask_arrays = on_mesh(mesh, _jnp_masks(masks))
    for data in _progress(sharded_split(hp, "encode", mesh), "encoding"):
        posteriors = step(params, on_mesh(mesh, batch_key(hp.run.seed, data.batch.index)),
                          local_rows_to_mesh(mesh, data.x), mask_arrays, jnp.float32(posterior_temperature))
        posteriors = {g: np.asarray(p, np.float32)[:data.batch.size] for g, p in to_host(posteriors).items()}
        check_finite_outputs(all(np.isfinite(p).all() for p in posteriors.values()),
                             f"the encoding of {describe_images(data.names)}", _checkpoint_name(hp))
        builder.add_batch(data.names, posteriors)
    return builder.build()


def make_decoding_step(hp: Any, model: UniversalAutoEncoder) -> Callable:
    """`images, finite = step(params, rng, latents, masks, level_temperatures)`: images decoded from per-group
    latents and masks (efficient_vdvae_common.latent_decoding) and whether their logits are finite."""
    dist = OutputDistribution.from_hparams(hp)

    def step(params, rng, latents, masks, level_temperatures):
        # The split of reconstruction's step: batch i of both draws the same output noise.
        model_rng, output_rng = jax.random.split(rng)
        logits = model.apply({"params": params}, model_rng, latents, masks, level_temperatures, method=model.decode)
        return render_images(hp, logits, dist, output_rng), jnp.all(jnp.isfinite(logits))

    return jax.jit(step)


def decode_encodings(hp: Any, model: UniversalAutoEncoder, params: Any, encodings: Encodings,
                     temperatures: list[float] | float = 1.0, posterior_temperature: float = 0.0,
                     rng: np.random.Generator | None = None, step: Callable | None = None,
                     first_batch: int = 0, mesh: Mesh | None = None) -> np.ndarray:
    """Images (N, H, W, C) uint8 of every image of `encodings`, in its order, synthesis.batch_size at a time.

    Active variates: the stored posterior means (`posterior_temperature` 0) or
    samples of the stored posteriors at that temperature (eps from `rng`,
    default seeded by run.seed); the other variates: prior samples at
    `temperatures` (one per top-level block, or one for all). Images are read
    from the output distribution as synthesis.output_sampling says. Batch i
    uses the key fold_in(PRNGKey(run.seed), first_batch + i). `encodings` may
    be edited or built (efficient_vdvae_common.latent_decoding.interpolate_encodings);
    `step` (make_decoding_step) saves a compile across calls. Runs over `mesh` (default: every device);
    every process gets every image.
    """
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    rng = rng if rng is not None else posterior_sample_rng(hp.run.seed)
    step = step or make_decoding_step(hp, model)
    shapes, batch_size = group_shapes(hp), hp.synthesis.batch_size
    padded = padded_size(batch_size, mesh)
    n_levels = num_levels(hp)
    level_temperatures = jnp.asarray([float(temperatures)] * n_levels if isinstance(temperatures, (int, float))
                                     else temperatures, jnp.float32)
    images = []
    for index, rows in enumerate(decoding_batches(len(encodings.file_names), batch_size)):
        # Every process computes the whole batch's inputs (the same numpy draws) and feeds its devices' rows.
        latents, masks = decoding_inputs(encodings, rows, shapes, posterior_temperature, rng)
        real = len(latents[0])
        # Zero-padded to the (device-padded) batch size: one compile for every batch.
        latents = [host_rows_to_mesh(mesh, pad_rows(z, padded)) for z in latents]
        outputs, finite = step(params, on_mesh(mesh, batch_key(hp.run.seed, first_batch + index)), latents,
                               on_mesh(mesh, [jnp.asarray(m) for m in masks]), on_mesh(mesh, level_temperatures))
        check_finite_outputs(bool(finite), f"the decoding of {describe_images(encodings.file_names[rows])}",
                             _checkpoint_name(hp))
        images.append(model_space_to_uint8(np.asarray(to_host(outputs))[:real], is_binarized_mnist(hp)))
    return np.concatenate(images)


def decode(hp: Any, model: UniversalAutoEncoder, params: Any, encodings: Encodings,
           output_dir: str | Path | None, mesh: Mesh | None = None) -> list[Path]:
    """Decoding mode (efficient_vdvae_common.latent_decoding.write_decoded_images); returns the folders.

    Every setting reuses the same keys, so settings differ in the pruned variates' temperatures only.
    """
    mesh = mesh or synthesis_mesh()
    params = on_mesh(mesh, params)
    step = make_decoding_step(hp, model)

    def decode_part(part, temperatures, rng, batch_index):
        return decode_encodings(hp, model, params, part, temperatures, hp.synthesis.decoding_posterior_temperature,
                                rng, step, first_batch=batch_index, mesh=mesh)

    return write_decoded_images(hp, encodings, output_dir if is_main_process() else None, num_levels(hp),
                                decode_part, _progress)


def run_synthesis(hp: Any, root: str | Path = ".", posterior_temperature: float = 1.0) -> None:
    """Load run `hp.run.name` from `root` and run `synthesis.synthesis_mode` on every device, printing a
    summary (process 0 writes and prints; call init_distributed first in a multi-process launch)."""
    run_logs = logs_dir(hp.run.name, root)
    mesh = synthesis_mesh()
    main = is_main_process()
    # Missing FID weights stop here, before any generation work.
    inception_weights = fid_weights(hp)
    model = UniversalAutoEncoder(hp)
    params = load_synthesis_params(hp, model, root, mesh)
    # Masks and encodings come before any output so that a missing file leaves nothing half-written.
    masks = load_variate_masks(hp, root) if needs_variate_masks(hp) else None
    encodings = (load_encodings_for_decoding(hp, run_logs, group_shapes(hp))
                 if hp.synthesis.synthesis_mode == "decoding" else None)
    run_mode(hp, run_logs, masks,
             reconstruct=lambda output_dir, masks: reconstruct(hp, model, params, output_dir, masks,
                                                               posterior_temperature, mesh),
             generate=lambda output_dir: generate(hp, model, params, output_dir, mesh),
             compute_div_stats=lambda: compute_div_stats(hp, model, params, mesh),
             encode=lambda masks: encode(hp, model, params, masks, posterior_temperature, mesh),
             decode=lambda output_dir: decode(hp, model, params, encodings, output_dir, mesh),
             main_process=main)
    if inception_weights is not None and main:
        # The metric is pytorch-fid's (torch, on the CPU), on the PNGs generation wrote.
        write_generation_fids(hp, inception_weights, generated_folders(hp, run_logs), synthesis_images(hp))


def synthesis_images(hp: Any) -> Iterator[np.ndarray]:
    """The synthesis set as uint8 (H, W, C) images, as reconstruction writes its targets."""
    binarized = is_binarized_mnist(hp)
    for x, mask in padded_batches(hp, "synthesis"):
        x = x[mask]
        yield from model_space_to_uint8(x[:, MNIST_CROP, MNIST_CROP] if binarized else x, binarized)
