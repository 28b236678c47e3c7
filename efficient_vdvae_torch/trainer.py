"""The training loop around `train_step`: data, validation, logging, checkpoints, signals.

`Trainer(hp, ctx).run()` trains run `hp.run.name` from its checkpoint (or from
scratch) until `train.total_train_steps` updates are applied or a stop
signal arrives, on one process or as one rank of a data-parallel group.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from efficient_vdvae_common.architecture import is_binarized_mnist
from efficient_vdvae_common.data import DataError
from efficient_vdvae_common.data.errors import CorruptImageError
from efficient_vdvae_common.images import make_grid, model_space_to_uint8
from efficient_vdvae_common.noise_streams import (SUMMARY_STREAM, TRAIN_STREAM, VALIDATION_OUTPUT_STREAM,
                                                  VALIDATION_STREAM)
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_common.tensorboard import TensorBoardWriter, close_writers
from efficient_vdvae_common.training_log import (SkipLimit, StopFlag, TrainingDiverged, check_run_folder,
                                                 format_train_line, ignore_stop_signals_in_worker,
                                                 is_evaluation_step, non_finite_weights_message, per_group_scalars,
                                                 train_scalars)
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
from hparams import ConfigError
from hparams.saved_run import logs_dir

IMAGES_PER_GRID = 8
# Validation means aggregated over ranks, in this order (report units; SSIM in [0, 1]).
VALIDATION_SCALARS = ("recon_report", "kl_div", "nelbo", "ssim")


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
    progress: TrainingProgress
    noise: SeededLatentNoise


def build_training(hp: Any, ctx: DistributedContext, checkpoint_file: Path) -> TrainingSetup:
    """Model, EMA, optimiser and LR schedule, restored from `checkpoint_file` when it exists."""
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
    return TrainingSetup(model, ema_model, step_model, optimizer, lr_schedule, progress, noise)


def check_same_start(progress: TrainingProgress, ctx: DistributedContext, checkpoint_file: Path) -> None:
    """Every rank resumes from the same checkpoint; on several nodes that needs one shared run folder.

    A node that does not see rank 0's checkpoint would silently start from scratch (DDP copies
    rank 0's weights, but not the optimiser state nor the step count) and the ranks would drift apart.
    """
    if ctx.world_size == 1:
        return
    per_rank = gather_ints([progress.global_step, progress.gradient_skip_count, progress.data_epoch,
                            progress.data_batch], ctx.device)
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
    return images[:IMAGES_PER_GRID].detach().float().permute(0, 2, 3, 1).cpu().numpy()


def log_batch_summaries(hp: Any, writer: TensorBoardWriter, step: int, x: torch.Tensor, stats: dict,
                        samples: torch.Tensor, model: nn.Module | None = None) -> None:
    """Histograms (targets, outputs, output means and log-scales, weights) and image grids."""
    binarized = is_binarized_mnist(hp)
    writer.add_histogram("Distributions/target", x.float().cpu().numpy(), step, bins=20)
    writer.add_histogram("Distributions/output", samples.float().cpu().numpy(), step, bins=20)
    dist = OutputDistribution.from_hparams(hp)
    if not dist.bernoulli:
        _, means, raw_scales, _ = split_mol_logits(stats["logits"].float(), dist)
        writer.add_histogram("OutputLayer/means", means.cpu().numpy(), step)
        writer.add_histogram("OutputLayer/log_scales", mol_log_scales(raw_scales, dist)[1].cpu().numpy(), step)
    if model is not None:
        for name, parameter in model.named_parameters():
            writer.add_histogram(f"Weights/{name}", parameter.detach().float().cpu().numpy(), step)
    writer.add_image("Images/targets", make_grid(model_space_to_uint8(_channels_last_numpy(x), binarized)), step)
    writer.add_image("Images/reconstructions",
                     make_grid(model_space_to_uint8(_channels_last_numpy(samples), binarized)), step)


class ProgressView:
    """A tqdm bar on a terminal, plain lines otherwise (logs, pipes); silent on ranks > 0."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def advance(self, steps: int) -> None:
        if self.bar is not None and steps:
            self.bar.update(steps)

    def line(self, text: str, summary: bool = False) -> None:
        """A log line: the bar's postfix for per-step lines, a printed line for the rest."""
        if not self.enabled:
            return
        if self.bar is None:
            print(text, flush=True)
        elif summary:
            self.bar.write(text)
        else:
            self.bar.set_postfix_str(text.split(" | ", 1)[1])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_batch_sizes(hp: Any, world_size: int) -> None:
    """Global batches must split evenly over the processes (SPEC section 6)."""
    for key in ("train.batch_size", "val.batch_size"):
        section, name = key.split(".")
        value = getattr(getattr(hp, section), name)
        if value % world_size:
            raise ConfigError(f"{key} = {value} is not divisible by the {world_size} training processes "
                              "(NUM_GPUS_PER_NODE x nodes); the global batch is split evenly over them")


class Trainer:
    """One training run (all its ranks run one Trainer each).

    Every rank holds the full model, its EMA copy and the optimiser state;
    DDP averages the gradients, so every rank applies the same update and
    keeps an identical EMA. Rank 0 alone writes checkpoints and TensorBoard.
    """

    def __init__(self, hp: Any, ctx: DistributedContext, root: str | Path = "."):
        check_batch_sizes(hp, ctx.world_size)
        self.hp = hp
        self.ctx = ctx
        self.checkpoint_file = checkpoint_path(hp.run.name, root)
        self.logs = logs_dir(hp.run.name, root)
        check_run_folder(self.logs, hp.run.name)
        if ctx.is_main:
            remove_stale_temp_files(self.checkpoint_file)
        self.setup = build_training(hp, ctx, self.checkpoint_file)
        check_same_start(self.setup.progress, ctx, self.checkpoint_file)
        if self.checkpoint_file.exists() and (bad := non_finite_weights(self.setup)):
            raise CheckpointError(f"checkpoint {self.checkpoint_file} holds {bad} that are not finite (NaN or "
                                  "inf): no update can be applied to them; resume from an earlier checkpoint "
                                  f"({self.checkpoint_file.name}.history/) or start a new run.name")
        self.skip_limit = SkipLimit(hp)
        self.train_loader = create_dataloader(hp, "train", rank=ctx.rank, world_size=ctx.world_size)
        if len(self.train_loader) == 0:
            raise DataError(f"the train split ({hp.data.train_data_path}) has fewer images than one global "
                            f"batch (train.batch_size = {hp.train.batch_size}); nothing to train on")
        self.val_loader = create_dataloader(hp, "val", rank=ctx.rank, world_size=ctx.world_size)
        for loader in (self.train_loader, self.val_loader):  # stop signals are the main process's
            loader.worker_init_fn = functools.partial(ignore_stop_signals_in_worker, loader.worker_init_fn)
        self.writers = None
        if ctx.is_main:
            self.writers = {mode: TensorBoardWriter(self.logs / mode) for mode in ("train", "val")}
        self.stop = StopFlag()
        # What the checkpoint file holds now (None: no file yet).
        self.saved_progress = self.setup.progress if self.checkpoint_file.exists() else None

    @property
    def progress(self) -> TrainingProgress:
        return self.setup.progress

    def run(self) -> TrainingProgress:
        """Train until total_train_steps or a stop signal; always leaves a checkpoint of the last step."""
        hp = self.hp
        total = hp.train.total_train_steps
        self.stop.install()
        view = ProgressView(self.ctx.is_main, total, self.progress.global_step)
        if self.ctx.is_main and self.progress.global_step:
            view.line(f"resuming run '{hp.run.name}' at step {self.progress.global_step} "
                      f"(epoch {self.progress.data_epoch}, batch {self.progress.data_batch}, "
                      f"{self.progress.gradient_skip_count} skipped updates)", summary=True)
        stopped = False
        try:
            while self.progress.global_step < total and not stopped:
                stopped = self._run_epoch(view)
            if self.progress != self.saved_progress:
                self.save_checkpoint()
        finally:
            self.stop.uninstall()
            view.close()
            if self.writers:
                close_writers(self.writers.values())  # quiet when the run is already failing
        if self.ctx.is_main:
            reason = "stopped by signal" if stopped else "finished"
            print(f"{reason} at step {self.progress.global_step}; checkpoint {self.checkpoint_file}", flush=True)
        return self.progress

    def _run_epoch(self, view: ProgressView) -> bool:
        """Train from the current data position to the end of its epoch; True when asked to stop."""
        hp, setup, ctx = self.hp, self.setup, self.ctx
        sampler = self.train_loader.sampler
        sampler.set_epoch(self.progress.data_epoch)
        sampler.set_start_batch(self.progress.data_batch)
        for x in self.train_loader:
            x = x.to(ctx.device, non_blocking=True)
            if hp.run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            progress = self.progress
            started = time.perf_counter()
            noise = setup.noise.draw(TRAIN_STREAM, progress.global_step + progress.gradient_skip_count,
                                     x.shape[0] * ctx.world_size, x.shape[0])
            stats = train_step(hp, setup.step_model, setup.ema_model, setup.optimizer, setup.lr_schedule, x,
                               progress.global_step, noise)
            seconds = time.perf_counter() - started
            self.setup.progress = progress = dataclasses.replace(
                progress, data_batch=progress.data_batch + 1,
                global_step=progress.global_step + (0 if stats["skipped"] else 1),
                gradient_skip_count=progress.gradient_skip_count + (1 if stats["skipped"] else 0))
            view.advance(0 if stats["skipped"] else 1)

            consumed = progress.global_step + progress.gradient_skip_count
            if consumed % hp.train.logging_interval_in_steps == 0:
                view.line(format_train_line(progress, hp.train.total_train_steps, seconds, stats,
                                            setup.model.num_groups))
                if self.writers:
                    self.writers["train"].add_scalars(train_scalars(progress, seconds, stats), progress.global_step)
                    self.writers["train"].flush()
            self.skip_limit.record(stats["skipped"], progress, stats["grad_norm"])
            if not stats["skipped"] and is_evaluation_step(progress.global_step,
                                                          hp.train.checkpoint_and_eval_interval_in_steps,
                                                          hp.train.total_train_steps):
                try:
                    self.evaluate_and_log(x, stats, view)
                except CorruptImageError:  # a bad file in val_data: keep the steps trained, then stop
                    self.save_checkpoint(this_rank_alone=True)
                    raise
                self.save_checkpoint()
            stop_now = any_rank(self.stop.requested, ctx.device) if ctx.world_size > 1 else self.stop.requested
            if stop_now or progress.global_step >= hp.train.total_train_steps:
                return stop_now
        self.setup.progress = dataclasses.replace(self.progress, data_epoch=self.progress.data_epoch + 1,
                                                  data_batch=0)
        return False

    def evaluate_and_log(self, train_x: torch.Tensor, train_stats: dict, view: ProgressView) -> None:
        """Validation on every rank; summaries of the last train batch and the first val batch on rank 0."""
        hp, setup, step = self.hp, self.setup, self.progress.global_step
        val_scalars, val_avg_kl, first_val = validate(hp, setup.model, self.val_loader, self.ctx, setup.noise)
        if not self.ctx.is_main:
            return
        train_samples = setup.model.sample_output(train_stats["logits"],
                                                  generator=setup.noise.output_generator(SUMMARY_STREAM, step))
        train_ssim = batch_ssim(hp, train_x, train_samples)
        view.line(f"step {step} | train nelbo {train_stats['nelbo']:.4f} ssim {train_ssim:.4f}"
                  f" | val recon {val_scalars['recon_report']:.4f} kl {val_scalars['kl_div']:.4f}"
                  f" nelbo {val_scalars['nelbo']:.4f} ssim {val_scalars['ssim']:.4f}", summary=True)
        train_writer, val_writer = self.writers["train"], self.writers["val"]
        train_writer.add_scalar("Metrics/ssim", train_ssim, step)
        log_batch_summaries(hp, train_writer, step, train_x, train_stats, train_samples, model=setup.model)
        val_writer.add_scalars({"Losses/reconstruction": val_scalars["recon_report"],
                                "Losses/kl_div": val_scalars["kl_div"], "Losses/nelbo": val_scalars["nelbo"],
                                "Metrics/ssim": val_scalars["ssim"]}, step)
        val_writer.add_scalars(per_group_scalars(val_avg_kl), step)
        if first_val is not None:
            val_x, val_stats = first_val
            log_batch_summaries(hp, val_writer, step, val_x, val_stats, val_stats["samples"])
        train_writer.flush()
        val_writer.flush()

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
