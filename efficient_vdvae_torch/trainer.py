"""The training loop around `train_step`: data, validation, logging, checkpoints, signals.

`Trainer(hp, ctx).run()` trains run `hp.run.name` from its checkpoint (or from
scratch) until `train.total_train_steps` updates are applied or a stop
signal arrives, on one process or as one rank of a data-parallel group.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from efficient_vdvae_common.architecture import is_binarized_mnist
from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.noise_streams import (SUMMARY_STREAM, TRAIN_STREAM, VALIDATION_OUTPUT_STREAM,
                                                  VALIDATION_STREAM)
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_common.training_log import (TrainingDiverged, ignore_stop_signals_in_worker,
                                                 non_finite_weights_message)
from efficient_vdvae_common.training_loop import VALIDATION_SCALARS, BatchSummary, TrainingLoop
from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from efficient_vdvae_torch.checkpoints import (checkpoint_path, load_checkpoint, remove_stale_temp_files,
                                               restore_training_state, save_checkpoint, training_state)
from efficient_vdvae_torch.data import create_dataloader
from efficient_vdvae_torch.distributed import DistributedContext, all_reduce_sum, any_rank, barrier, gather_ints
from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.output_distribution import mol_log_scales, split_mol_logits
from efficient_vdvae_torch.model.schedules import learning_rate_schedule
from efficient_vdvae_torch.model.ssim import ssim_metric
from efficient_vdvae_torch.train_step import eval_step, train_step
from efficient_vdvae_torch.training_noise import SeededLatentNoise


def seed_everything(seed: int) -> None:
    """Same initial weights on every rank (DDP also broadcasts rank 0's) and reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclasses.dataclass
class TrainingSetup:
    model: nn.Module  # the bare model: checkpoints, evaluation, EMA source
    ema_model: nn.Module
    step_model: nn.Module  # what train_step calls: DDP and/or torch.compile around `model`
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    noise: SeededLatentNoise


def build_training(hp: Any, ctx: DistributedContext, checkpoint_file: Path
                   ) -> tuple[TrainingSetup, TrainingProgress]:
    """Model, EMA, optimiser and LR schedule, restored from `checkpoint_file` when it exists, and the
    progress to continue from."""
    seed_everything(hp.run.seed)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithms once
    model = UniversalAutoEncoder(hp).to(ctx.device)
    if hp.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = build_optimizer(hp, model)
    lr_schedule = learning_rate_schedule(hp, optimizer)

    state = load_checkpoint(checkpoint_file, map_location=ctx.device)
    if state is None:
        progress = TrainingProgress()
    else:
        progress = restore_training_state(state, model, ema_model, optimizer, lr_schedule,
                                          resume_from_ema=hp.train.resume_from_ema)
        del state

    # Posterior noise and output samples come from SeededLatentNoise's derived generators (resume
    # needs no RNG state); the global RNG, used by nothing in training, differs per rank all the same.
    torch.manual_seed(hp.run.seed + ctx.rank)
    noise = SeededLatentNoise(hp, ctx.rank, ctx.world_size, ctx.device)
    step_model: nn.Module = model
    if ctx.world_size > 1:
        step_model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                             else None)
    if hp.run.compile:
        step_model = torch.compile(step_model)
    return TrainingSetup(model, ema_model, step_model, optimizer, lr_schedule, noise), progress


def check_same_start(progress: TrainingProgress, ctx: DistributedContext, checkpoint_file: Path) -> None:
    """Every rank resumes from the same checkpoint; on several nodes that needs one shared run folder.

    A node that does not see rank 0's checkpoint would silently start from scratch (DDP copies
    rank 0's weights, but not the optimiser state nor the step count) and the ranks would drift apart.
    """
    if ctx.world_size == 1:
        return
    per_rank = gather_ints(progress.as_ints(), ctx.device)
    differing = [rank for rank, values in enumerate(per_rank) if values != per_rank[0]]
    if differing:
        rank = differing[0]
        raise CheckpointError(
            f"the training processes do not resume from the same checkpoint {checkpoint_file}: rank 0 is at "
            f"step {per_rank[0][0]}, rank {rank} at step {per_rank[rank][0]} (0: no checkpoint there), "
            f"{len(differing)} rank(s) differ. Every node must see the same run folders (checkpoints-<name>, "
            "logs-<name>): start train.sh on every node from one directory of a shared filesystem")


def non_finite_weights(setup: TrainingSetup) -> str | None:
    """'weights', 'EMA weights' (or both) when some parameter is NaN or inf, else None."""
    def finite(model: nn.Module) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())

    bad = [name for name, model in (("weights", setup.model), ("EMA weights", setup.ema_model)) if not finite(model)]
    return " and ".join(bad) or None


def batch_ssim(hp: Any, targets: torch.Tensor, outputs: torch.Tensor) -> float:
    """Batch-mean SSIM of model-space images (NaN for binarized MNIST, where SPEC defines none)."""
    if is_binarized_mnist(hp):
        return float("nan")
    return ssim_metric(targets, outputs)


@torch.no_grad()
def validate(hp: Any, model: nn.Module, loader: torch.utils.data.DataLoader, ctx: DistributedContext,
             noise: SeededLatentNoise | None = None
             ) -> tuple[dict[str, float], np.ndarray, tuple[torch.Tensor, dict] | None]:
    """Means over every validation image of every rank: (scalars, avg KL per group, first batch).

    Each rank sums batch means weighted by batch size; the sums and the image
    counts are added over ranks, so uneven last batches weigh correctly. With
    `noise`, the posterior noise (hence every mean but SSIM, which samples the
    output) is the same for any number of ranks, and the output samples are
    derived from (seed, batch index, rank); without it both use the global RNG.
    """
    was_training = model.training
    totals = None
    first_batch = None
    num_images, global_batch = len(loader.dataset), loader.batch_size * ctx.world_size
    for index, x in enumerate(loader):
        x = x.to(ctx.device, non_blocking=True)
        eps = None if noise is None else noise.draw(
            VALIDATION_STREAM, index, min(global_batch, num_images - index * global_batch), x.shape[0])
        stats = eval_step(hp, model, x, eps)
        samples = model.sample_output(stats["logits"], generator=None if noise is None else
                                      noise.output_generator(VALIDATION_OUTPUT_STREAM, index))
        batch = x.shape[0]
        values = [stats["recon_report"], stats["kl_div"], stats["nelbo"]]
        row = torch.tensor(values + [batch_ssim(hp, x, samples)], dtype=torch.float64)
        row = torch.cat([row, stats["avg_kl_per_group"].double(), torch.ones(1, dtype=torch.float64)]) * batch
        totals = row if totals is None else totals + row
        if first_batch is None:
            first_batch = (x, {**stats, "samples": samples})
    model.train(was_training)
    if totals is None:  # this rank got no image; it still joins the reduction
        totals = torch.zeros(len(VALIDATION_SCALARS) + int(model.num_groups) + 1, dtype=torch.float64)
    totals = all_reduce_sum(totals.to(ctx.device)).cpu()
    means = (totals[:-1] / totals[-1]).numpy()
    scalars = dict(zip(VALIDATION_SCALARS, means[:len(VALIDATION_SCALARS)].tolist()))
    return scalars, means[len(VALIDATION_SCALARS):], first_batch


def _channels_last_numpy(images: torch.Tensor) -> np.ndarray:
    return images.detach().float().permute(0, 2, 3, 1).cpu().numpy()


def batch_summary(hp: Any, x: torch.Tensor, stats: dict, samples: torch.Tensor,
                  model: nn.Module | None = None) -> BatchSummary:
    """What TensorBoard shows of batch `x` (with the weights of `model`, when given)."""
    summary = BatchSummary(_channels_last_numpy(x), _channels_last_numpy(samples))
    dist = OutputDistribution.from_hparams(hp)
    if not dist.bernoulli:
        _, means, raw_scales, _ = split_mol_logits(stats["logits"].float(), dist)
        summary.output_means = means.cpu().numpy()
        summary.output_log_scales = mol_log_scales(raw_scales, dist)[1].cpu().numpy()
    if model is not None:
        summary.weights = {name: parameter.detach().float().cpu().numpy()
                           for name, parameter in model.named_parameters()}
    return summary


class Trainer(TrainingLoop):
    """One training run (all its ranks run one Trainer each).

    Every rank holds the full model, its EMA copy and the optimiser state;
    DDP averages the gradients, so every rank applies the same update and
    keeps an identical EMA. Rank 0 alone writes checkpoints and TensorBoard.
    """

    def __init__(self, hp: Any, ctx: DistributedContext, root: str | Path = "."):
        super().__init__(hp, ctx.is_main, root, ctx.world_size, "training processes (NUM_GPUS_PER_NODE x nodes)")
        self.ctx = ctx
        self.checkpoint_file = checkpoint_path(hp.run.name, root)
        self.checkpoint_place = f"checkpoint {self.checkpoint_file}"
        if ctx.is_main:
            remove_stale_temp_files(self.checkpoint_file)
        self.setup, self.progress = build_training(hp, ctx, self.checkpoint_file)
        self.num_groups = int(self.setup.model.num_groups)
        check_same_start(self.progress, ctx, self.checkpoint_file)
        if self.checkpoint_file.exists() and (bad := non_finite_weights(self.setup)):
            raise CheckpointError(f"checkpoint {self.checkpoint_file} holds {bad} that are not finite (NaN or "
                                  "inf): no update can be applied to them; resume from an earlier checkpoint "
                                  f"({self.checkpoint_file.name}.history/) or start a new run.name")
        self.train_loader = create_dataloader(hp, "train", rank=ctx.rank, world_size=ctx.world_size)
        if len(self.train_loader) == 0:
            raise DataError(f"the train split ({hp.data.train_data_path}) has fewer images than one global "
                            f"batch (train.batch_size = {hp.train.batch_size}); nothing to train on")
        self.val_loader = create_dataloader(hp, "val", rank=ctx.rank, world_size=ctx.world_size)
        for loader in (self.train_loader, self.val_loader):  # stop signals are the main process's
            loader.worker_init_fn = functools.partial(ignore_stop_signals_in_worker, loader.worker_init_fn)
        self.open_writers()
        self.saved_progress = self.progress if self.checkpoint_file.exists() else None

    def epoch_batches(self) -> contextlib.nullcontext:
        sampler = self.train_loader.sampler
        sampler.set_epoch(self.progress.data_epoch)
        sampler.set_start_batch(self.progress.data_batch)
        return contextlib.nullcontext(self.train_loader)

    def prepare_batch(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.ctx.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.hp.run.channels_last else x

    def train_on(self, x: torch.Tensor) -> dict:
        setup, world_size = self.setup, self.ctx.world_size
        noise = setup.noise.draw(TRAIN_STREAM, self.progress.consumed_batches, x.shape[0] * world_size, x.shape[0])
        return train_step(self.hp, setup.step_model, setup.ema_model, setup.optimizer, setup.lr_schedule, x,
                          self.progress.global_step, noise)

    def stop_requested_anywhere(self) -> bool:
        return any_rank(self.stop.requested, self.ctx.device) if self.ctx.world_size > 1 else self.stop.requested

    def evaluate_and_log(self, batch: torch.Tensor, x: torch.Tensor, stats: dict) -> None:
        """Validation on every rank; summaries of the last train batch and the first val batch on rank 0."""
        hp, setup, step = self.hp, self.setup, self.progress.global_step
        val_scalars, val_avg_kl, first_val = validate(hp, setup.model, self.val_loader, self.ctx, setup.noise)
        if not self.is_main:
            return
        train_samples = setup.model.sample_output(stats["logits"],
                                                  generator=setup.noise.output_generator(SUMMARY_STREAM, step))
        val_summary = None
        if first_val is not None:
            val_x, val_stats = first_val
            val_summary = batch_summary(hp, val_x, val_stats, val_stats["samples"])
        self.log_evaluation(stats["nelbo"], batch_ssim(hp, x, train_samples),
                            batch_summary(hp, x, stats, train_samples, model=setup.model),
                            val_scalars, val_avg_kl, val_summary, is_binarized_mnist(hp))

    def save_after_failed_validation(self) -> None:
        self.save_checkpoint(this_rank_alone=True)

    def save_checkpoint(self, this_rank_alone: bool = False) -> None:
        """Rank 0 writes; every rank waits, so no rank runs ahead of a checkpoint being written.

        Non-finite weights are never written (every rank checks its identical copy, so all stop).
        `this_rank_alone`: the rank that hit a corrupt validation image writes (its weights are rank
        0's) and waits for no one: the other ranks are blocked in validation's reduction.
        """
        if bad := non_finite_weights(self.setup):
            raise TrainingDiverged(non_finite_weights_message(bad.capitalize(), self.progress.global_step))
        if self.ctx.is_main or this_rank_alone:
            setup = self.setup
            save_checkpoint(training_state(self.progress, setup.model, setup.ema_model, setup.optimizer,
                                           setup.lr_schedule),
                            self.checkpoint_file, self.hp.run.max_allowed_checkpoints)
            self.saved_progress = self.progress
        if not this_rank_alone:
            barrier()
        # The other ranks know the file is written once rank 0 reaches the barrier (a lost-process
        # message names saved_progress's step: it must be the file's).
        self.saved_progress = self.progress
