"""The JAX training loop around the jitted `train_step`: data, validation, logging, checkpoints, signals.

`Trainer(hp).run()` trains run `hp.run.name` from its latest checkpoint (or
from scratch) until `train.total_train_steps` updates are applied or a stop
signal arrives, data parallel over all local devices: the global batch is
sharded along its first axis, the state replicated (see train_step.py),
over all processes' devices in a multi-process run (distributed.py): each
process reads its devices' slices of every global batch, all save each
checkpoint together, process 0 alone prints and writes TensorBoard, and a stop
signal to any process stops all after the same step.

Randomness needs no saved RNG state: the key of a train step is derived from
(run.seed, number of train batches consumed), that of validation batch i from
(run.seed, i). JAX's partitionable threefry draws the same numbers for a
global array however it is sharded, so N devices compute the 1-device step.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from efficient_vdvae_common.architecture import is_binarized_mnist, num_latent_groups
from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.noise_streams import SUMMARY_STREAM, TRAIN_STREAM, VALIDATION_STREAM
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_common.training_log import TrainingDiverged, non_finite_weights_message
from efficient_vdvae_common.training_loop import VALIDATION_SCALARS, BatchSummary, TrainingLoop
from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state, checkpoint_dir
from efficient_vdvae_jax.data import create_iterator
from efficient_vdvae_jax.distributed import (any_rank, gather_ints, gather_local, global_mesh, is_main_process,
                                             local_device_range, replicate, replicated_sharding, shard_batch,
                                             to_host)
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_jax.model.output_distribution import mol_log_scales, sample_output, split_mol_logits
from efficient_vdvae_jax.model.ssim import ssim_per_image
from efficient_vdvae_jax.train_step import TrainState, create_train_state, init_params, make_train_step

SSIM_WINDOW = 11


def step_key(seed: int, stream: int, counter: int) -> jax.Array:
    """The PRNG key of batch `counter` of `stream`: reproducible without any saved RNG state."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), counter)


def host_stats(hp: Any, stats: dict) -> dict:
    """Train step stats as numpy/Python values, plus the number of active latent groups (SPEC section 7)."""
    stats = jax.device_get(stats)
    stats["active_groups"] = int(np.sum(stats["avg_kl_per_group"] >= hp.metrics.latent_active_threshold))
    return stats


def make_validation_step(hp: Any, model: UniversalAutoEncoder) -> Callable:
    """`sums, first = step(params, rng, x, mask)` for one padded global batch.

    `sums` holds the mask-weighted sums of the per-image values (VALIDATION_SCALARS,
    then avg KL per group, then the image count), so that means over a whole pass
    weigh images, not batches. Per-image values come from the loss of each image
    alone: every term is a mean over images, so their mean is the batch's value.
    `first` holds what the summaries need (logits, output samples).
    """
    no_ssim = is_binarized_mnist(hp) or hp.data.target_res < SSIM_WINDOW
    dist = OutputDistribution.from_hparams(hp)

    def loss_of_one_image(x, logits, posterior, prior):
        add_batch = lambda tree: jax.tree.map(lambda a: a[None], tree)  # noqa: E731
        return compute_loss(hp, x[None], logits[None], add_batch(posterior), add_batch(prior), None)

    def validation_step(params, rng, x, mask):
        model_rng, output_rng = jax.random.split(rng)
        logits, posterior, prior = model.apply({"params": params}, model_rng, x)
        out = jax.vmap(loss_of_one_image)(x, logits, posterior, prior)
        samples = sample_output(logits, dist, output_rng, hp.synthesis.output_temperature)
        if no_ssim:
            ssim = jnp.full(x.shape[:1], jnp.nan)
        else:
            ssim = ssim_per_image(x * 127.5 + 127.5, samples * 127.5 + 127.5)
        per_image = jnp.concatenate([
            jnp.stack([out.recon_report, out.kl_div, out.nelbo, ssim], axis=1),
            out.avg_kl_per_group, jnp.ones_like(ssim)[:, None]], axis=1).astype(jnp.float32)
        sums = jnp.sum(jnp.where(mask[:, None], per_image, 0.0), axis=0)
        return sums, {"logits": logits, "samples": samples}

    return jax.jit(validation_step)


def padded_validation_batches(hp: Any, num_devices: int, devices: range | None = None
                              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Validation batches (devices, per_device, H, W, C) with their masks, the last one zero-padded
    to the full shape so that the validation step compiles once. `devices`: this process's slices
    of the `num_devices` (default: all)."""
    per_device = hp.val.batch_size // num_devices
    for x, mask in create_iterator(hp, "val", num_devices=num_devices, with_mask=True, devices=devices):
        missing = per_device - x.shape[1]
        if missing:
            x = np.concatenate([x, np.zeros((x.shape[0], missing) + x.shape[2:], x.dtype)], axis=1)
            mask = np.concatenate([mask, np.zeros((x.shape[0], missing), bool)], axis=1)
        yield x, mask


def validate(hp: Any, validation_step: Callable, params: Any, mesh: Mesh
             ) -> tuple[dict[str, float], np.ndarray, tuple[np.ndarray, dict] | None]:
    """Means over the validation images: (scalars, avg KL per group, first batch (x, logits/samples)).

    Each process reads its slices of each global batch; the sums are over the whole batch (the jitted
    step reduces across processes) and the first batch is gathered whole on every process."""
    totals, first_batch = None, None
    for index, (x, mask) in enumerate(padded_validation_batches(hp, mesh.size, local_device_range(mesh))):
        sums, outputs = validation_step(params, step_key(hp.run.seed, VALIDATION_STREAM, index),
                                        shard_batch(mesh, x), shard_batch(mesh, mask))
        sums = np.asarray(sums, np.float64)
        totals = sums if totals is None else totals + sums
        if first_batch is None:
            real = gather_local(mask.reshape(-1))
            first_batch = (gather_local(x.reshape((-1,) + x.shape[2:]))[real],
                           {key: value[real] for key, value in to_host(outputs).items()})
    if totals is None:
        raise DataError(f"the validation split ({hp.data.val_data_path}) has no images")
    means = totals[:-1] / totals[-1]
    scalars = dict(zip(VALIDATION_SCALARS, means[:len(VALIDATION_SCALARS)].tolist()))
    return scalars, means[len(VALIDATION_SCALARS):], first_batch


def batch_summary(hp: Any, x: np.ndarray, outputs: dict, params: Any | None = None) -> BatchSummary:
    """What TensorBoard shows of batch `x` (with the weights `params`, when given)."""
    summary = BatchSummary(x, outputs["samples"])
    dist = OutputDistribution.from_hparams(hp)
    if not dist.bernoulli:
        _, means, raw_scales, _ = split_mol_logits(jnp.asarray(outputs["logits"]), dist)
        summary.output_means = np.asarray(means)
        summary.output_log_scales = np.asarray(mol_log_scales(raw_scales, dist)[1])
    if params is not None:
        summary.weights = {".".join(path): np.asarray(value, np.float32)
                           for path, value in traverse_util.flatten_dict(jax.device_get(params)).items()}
    return summary


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def non_finite_weights(state: TrainState) -> str | None:
    """'weights', 'EMA weights' (or both) when some parameter is NaN or inf, else None."""
    bad = [name for name, tree in (("weights", state.params), ("EMA weights", state.ema_params))
           if not bool(_all_finite(tree))]
    return " and ".join(bad) or None


def check_same_start(values: list[int], what: str, directory: Path) -> None:
    """Every process resumes from the same checkpoint; on several hosts that needs one shared run folder.

    `values` (this process's newest checkpoint number, -1 for none; or its restored progress) are compared
    across processes before anything is restored: a host that does not see process 0's checkpoints would
    start from scratch, and the others restore collectively, waiting for it.
    """
    per_process = gather_ints(values)
    differing = [process for process, row in enumerate(per_process) if row != per_process[0]]
    if differing:
        def shown(row: list[int]) -> str:
            return "none" if row[0] < 0 else str(row[0])

        process = differing[0]
        raise CheckpointError(
            f"the training processes do not resume from the same checkpoint {directory}: process 0's {what} is "
            f"{shown(per_process[0])}, process {process}'s {shown(per_process[process])}, {len(differing)} "
            "process(es) differ. Every host must see the same run folders (checkpoints-<name>, logs-<name>): "
            "start train.py on every host from one directory of a shared filesystem")


class Trainer(TrainingLoop):
    """One training run over all devices of all processes; checkpoints and TensorBoard under `root`."""

    def __init__(self, hp: Any, root: str | Path = ".", devices: int | None = None):
        self.mesh = global_mesh(devices)
        super().__init__(hp, is_main_process(), root, self.mesh.size, "devices")
        self.local_devices = local_device_range(self.mesh)  # this process's slices of each global batch
        self.model = UniversalAutoEncoder(hp)
        self.num_groups = num_latent_groups(hp)
        self.checkpoints = TrainingCheckpoints(checkpoint_dir(hp.run.name, root), hp.run.max_allowed_checkpoints,
                                               optimizer_type=hp.optimizer.type)
        self.checkpoint_place = f"checkpoints in {self.checkpoints.directory}"
        first_epoch = create_iterator(hp, "train", num_devices=self.mesh.size, prefetch=1)
        first_epoch.close()
        if len(first_epoch) == 0:
            raise DataError(f"the train split ({hp.data.train_data_path}) has fewer images than one global "
                            f"batch (train.batch_size = {hp.train.batch_size}); nothing to train on")
        self.state, self.progress = self._initial_state()
        self.saved_progress = self.progress if self.checkpoints.latest() is not None else None
        if self.saved_progress is not None and (bad := non_finite_weights(self.state)):
            raise CheckpointError(f"checkpoint {self.checkpoints.directory}/{self.checkpoints.latest()} holds {bad} "
                                  "that are not finite (NaN or inf): no update can be applied to them; resume "
                                  "from an earlier step (delete the newest step folder) or start a new run.name")
        self.train_step = make_train_step(hp, self.model)
        self.validation_step = make_validation_step(hp, self.model)
        self.open_writers()

    def _initial_state(self) -> tuple[TrainState, TrainingProgress]:
        """The latest checkpoint's state (EMA weights as params with train.resume_from_ema), or a fresh one."""
        hp, replicated = self.hp, replicated_sharding(self.mesh)
        newest = self.checkpoints.latest()
        check_same_start([-1 if newest is None else newest], "newest checkpoint", self.checkpoints.directory)
        if newest is None:
            params = init_params(hp, self.model, jax.random.PRNGKey(hp.run.seed))
            return replicate(self.mesh, create_train_state(hp, params)), TrainingProgress()
        # Only the trainer (process 0: the folder is shared) moves a damaged step aside: it writes new ones there.
        state, progress = self.checkpoints.restore(abstract_train_state(hp, self.model, replicated),
                                                   move_unreadable_aside=jax.process_index() == 0)
        # A damaged step seen by one host alone makes it fall back further than the others.
        check_same_start(progress.as_ints(), "restored step", self.checkpoints.directory)
        if hp.train.resume_from_ema:
            state = state.replace(params=jax.tree.map(jnp.copy, state.ema_params))
        return state, progress

    def epoch_batches(self) -> contextlib.closing:
        return contextlib.closing(create_iterator(self.hp, "train", num_devices=self.mesh.size,
                                                  epoch=self.progress.data_epoch,
                                                  start_batch=self.progress.data_batch, devices=self.local_devices))

    def prepare_batch(self, batch: np.ndarray) -> jax.Array:
        return shard_batch(self.mesh, batch)

    def train_on(self, x: jax.Array) -> dict:
        self.state, stats = self.train_step(
            self.state, step_key(self.hp.run.seed, TRAIN_STREAM, self.progress.consumed_batches), x)
        return host_stats(self.hp, stats)  # waits for the step: its time and the skip decision

    def stop_requested_anywhere(self) -> bool:
        return any_rank(self.stop.requested)

    def evaluate_and_log(self, batch: np.ndarray, x: jax.Array, stats: dict) -> None:
        """Validation means; summaries of the last train batch (reconstructed with the updated
        weights: the jitted train step returns no logits) and of the first validation batch."""
        hp, step, params = self.hp, self.progress.global_step, self.state.params
        val_scalars, val_avg_kl, (val_x, val_outputs) = validate(hp, self.validation_step, params, self.mesh)
        sums, train_outputs = self.validation_step(
            params, step_key(hp.run.seed, SUMMARY_STREAM, step), x,
            shard_batch(self.mesh, np.ones(batch.shape[:2], bool)))
        # Collectives: every process takes part, process 0 alone logs.
        sums, train_outputs = np.asarray(sums), to_host(train_outputs)
        train_x = gather_local(batch.reshape((-1,) + batch.shape[2:]))
        if not self.is_main:
            return
        self.log_evaluation(float(sums[2] / sums[-1]), float(sums[3] / sums[-1]),
                            batch_summary(hp, train_x, train_outputs, params=params),
                            val_scalars, val_avg_kl, batch_summary(hp, val_x, val_outputs), is_binarized_mnist(hp))

    def save_after_failed_validation(self) -> None:
        if jax.process_count() == 1:  # processes save together; the others are in validation
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Never writes non-finite weights."""
        if bad := non_finite_weights(self.state):
            raise TrainingDiverged(non_finite_weights_message(bad.capitalize(), self.progress.global_step))
        self.checkpoints.save(self.state, self.progress)
        self.saved_progress = self.progress

    def close(self) -> None:
        self.checkpoints.close()
