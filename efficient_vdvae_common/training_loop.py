"""The training loop both trainers run around their framework's train step.

`TrainingLoop.run` trains from the current progress until
`train.total_train_steps` updates are applied or a stop signal arrives, and
always leaves a checkpoint of the last step; each epoch logs, validates and
checkpoints on the same steps in both frameworks. A trainer supplies only what
needs its tensors (the `TrainingLoop` methods that raise NotImplementedError):
its batches, its train step, its validation and its checkpoint writes.
The main process (rank 0) alone prints and writes TensorBoard.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, ContextManager, Iterable

import numpy as np

from efficient_vdvae_common.data.errors import CorruptImageError
from efficient_vdvae_common.images import make_grid, model_space_to_uint8
from efficient_vdvae_common.tensorboard import TensorBoardWriter, close_writers
from efficient_vdvae_common.training_log import (SkipLimit, StopFlag, check_run_folder, format_train_line,
                                                 is_evaluation_step, per_group_scalars, train_scalars)
from efficient_vdvae_common.training_progress import TrainingProgress
from hparams import ConfigError
from hparams.saved_run import logs_dir

IMAGES_PER_GRID = 8
# Validation means, in this order (report units; SSIM in [0, 1]).
VALIDATION_SCALARS = ("recon_report", "kl_div", "nelbo", "ssim")


def check_batch_sizes(hp: Any, parts: int, parts_name: str) -> None:
    """Global batches must split evenly over the `parts` (processes or devices, SPEC section 6)."""
    for key in ("train.batch_size", "val.batch_size"):
        section, name = key.split(".")
        value = getattr(getattr(hp, section), name)
        if value % parts:
            raise ConfigError(f"{key} = {value} is not divisible by the {parts} {parts_name}; "
                              "the global batch is split evenly over them")


@dataclasses.dataclass
class BatchSummary:
    """What TensorBoard shows of one batch, as numpy: channels-last model-space images, the output
    mixture's means and log-scales (None for a Bernoulli output), weights by name (None: not logged)."""
    x: np.ndarray
    samples: np.ndarray
    output_means: np.ndarray | None = None
    output_log_scales: np.ndarray | None = None
    weights: dict[str, np.ndarray] | None = None


def log_batch_summary(writer: TensorBoardWriter, step: int, summary: BatchSummary, binarized: bool) -> None:
    """Histograms (targets, outputs, output means and log-scales, weights) and image grids."""
    writer.add_histogram("Distributions/target", summary.x, step, bins=20)
    writer.add_histogram("Distributions/output", summary.samples, step, bins=20)
    if summary.output_means is not None:
        writer.add_histogram("OutputLayer/means", summary.output_means, step)
        writer.add_histogram("OutputLayer/log_scales", summary.output_log_scales, step)
    for name, value in (summary.weights or {}).items():
        writer.add_histogram(f"Weights/{name}", value, step)
    writer.add_image("Images/targets", make_grid(model_space_to_uint8(summary.x[:IMAGES_PER_GRID], binarized)), step)
    writer.add_image("Images/reconstructions",
                     make_grid(model_space_to_uint8(summary.samples[:IMAGES_PER_GRID], binarized)), step)


class ProgressView:
    """A tqdm bar on a terminal, plain lines otherwise (logs, pipes); silent on processes other than the main."""

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


class TrainingLoop:
    """The framework-free part of a Trainer: progress, logging, evaluation steps, stop signals."""

    def __init__(self, hp: Any, is_main: bool, root: str | Path, parts: int, parts_name: str):
        check_batch_sizes(hp, parts, parts_name)
        self.hp = hp
        self.is_main = is_main
        self.logs = logs_dir(hp.run.name, root)
        check_run_folder(self.logs, hp.run.name)
        self.skip_limit = SkipLimit(hp)
        self.stop = StopFlag()
        self.writers: dict[str, TensorBoardWriter] = {}
        self.view = ProgressView(False, 0, 0)
        self.progress = TrainingProgress()
        self.saved_progress: TrainingProgress | None = None  # what the newest checkpoint holds (None: none)

    def open_writers(self) -> None:
        """TensorBoard's train/ and val/ event files, on the main process (once the run is known to start)."""
        if self.is_main:
            self.writers = {mode: TensorBoardWriter(self.logs / mode) for mode in ("train", "val")}

    # ---- What each trainer supplies.
    num_groups: int
    checkpoint_place: str  # "checkpoint <file>" or "checkpoints in <folder>", for the last line

    def epoch_batches(self) -> ContextManager[Iterable[Any]]:
        """The train batches from the current data position to the end of its epoch."""
        raise NotImplementedError

    def prepare_batch(self, batch: Any) -> Any:
        """A batch as the train step takes it (on the devices); not counted in the step's time."""
        raise NotImplementedError

    def train_on(self, x: Any) -> dict:
        """One train step on prepared batch `x` at `self.progress`; its stats as host values
        (`skipped`, `grad_norm` and what format_train_line and train_scalars show)."""
        raise NotImplementedError

    def evaluate_and_log(self, batch: Any, x: Any, stats: dict) -> None:
        """Validation on every process; summaries of the last train batch and of validation on the main one."""
        raise NotImplementedError

    def save_checkpoint(self) -> None:
        """Write a checkpoint of `self.progress` (never of non-finite weights) and set `saved_progress`."""
        raise NotImplementedError

    def save_after_failed_validation(self) -> None:
        """Keep the steps trained before a corrupt validation image stops the run, where this can be done."""
        raise NotImplementedError

    def stop_requested_anywhere(self) -> bool:
        """True on every process when a stop signal reached any of them."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the trainer holds besides the writers."""

    # ---- The loop.
    def run(self) -> TrainingProgress:
        """Train until total_train_steps or a stop signal; always leaves a checkpoint of the last step."""
        hp, progress = self.hp, self.progress
        self.stop.install()
        self.view = ProgressView(self.is_main, hp.train.total_train_steps, progress.global_step)
        if progress.global_step:
            self.view.line(f"resuming run '{hp.run.name}' at step {progress.global_step} (epoch "
                           f"{progress.data_epoch}, batch {progress.data_batch}, {progress.gradient_skip_count} "
                           "skipped updates)", summary=True)
        stopped = False
        try:
            while self.progress.global_step < hp.train.total_train_steps and not stopped:
                stopped = self._run_epoch()
            if self.progress != self.saved_progress:
                self.save_checkpoint()
        finally:
            self.stop.uninstall()
            self.view.close()
            close_writers(self.writers.values())  # quiet when the run is already failing
            self.close()
        if self.is_main:
            reason = "stopped by signal" if stopped else "finished"
            print(f"{reason} at step {self.progress.global_step}; {self.checkpoint_place}", flush=True)
        return self.progress

    def _run_epoch(self) -> bool:
        """Train from the current data position to the end of its epoch; True when asked to stop."""
        hp = self.hp
        with self.epoch_batches() as batches:
            for batch in batches:
                x = self.prepare_batch(batch)
                started = time.perf_counter()
                stats = self.train_on(x)
                seconds = time.perf_counter() - started
                skipped = bool(stats["skipped"])
                self.progress = progress = self.progress.after_step(skipped)
                self.view.advance(0 if skipped else 1)

                if progress.consumed_batches % hp.train.logging_interval_in_steps == 0 and self.is_main:
                    self.view.line(format_train_line(progress, hp.train.total_train_steps, seconds, stats,
                                                     self.num_groups))
                    self.writers["train"].add_scalars(train_scalars(progress, seconds, stats), progress.global_step)
                    self.writers["train"].flush()
                self.skip_limit.record(skipped, progress, float(stats["grad_norm"]))
                if not skipped and is_evaluation_step(progress.global_step,
                                                      hp.train.checkpoint_and_eval_interval_in_steps,
                                                      hp.train.total_train_steps):
                    try:
                        self.evaluate_and_log(batch, x, stats)
                    except CorruptImageError:  # a bad file in val_data: keep the steps trained, then stop
                        self.save_after_failed_validation()
                        raise
                    self.save_checkpoint()
                # A signal to any process stops all of them after this same step.
                stop = self.stop_requested_anywhere()
                if stop or progress.global_step >= hp.train.total_train_steps:
                    return stop
        self.progress = self.progress.next_epoch()
        return False

    def log_evaluation(self, train_nelbo: float, train_ssim: float, train: BatchSummary,
                       val_scalars: dict[str, float], val_avg_kl: np.ndarray, val: BatchSummary | None,
                       binarized: bool) -> None:
        """The evaluation line and TensorBoard summaries of one evaluation step (main process only)."""
        step = self.progress.global_step
        self.view.line(f"step {step} | train nelbo {train_nelbo:.4f} ssim {train_ssim:.4f}"
                       f" | val recon {val_scalars['recon_report']:.4f} kl {val_scalars['kl_div']:.4f}"
                       f" nelbo {val_scalars['nelbo']:.4f} ssim {val_scalars['ssim']:.4f}", summary=True)
        train_writer, val_writer = self.writers["train"], self.writers["val"]
        train_writer.add_scalar("Metrics/ssim", train_ssim, step)
        log_batch_summary(train_writer, step, train, binarized)
        val_writer.add_scalars({"Losses/reconstruction": val_scalars["recon_report"],
                                "Losses/kl_div": val_scalars["kl_div"], "Losses/nelbo": val_scalars["nelbo"],
                                "Metrics/ssim": val_scalars["ssim"]}, step)
        val_writer.add_scalars(per_group_scalars(val_avg_kl), step)
        if val is not None:
            log_batch_summary(val_writer, step, val, binarized)
        train_writer.flush()
        val_writer.flush()

