"""What both trainers share around the loop: stop signals, the log line and
the TensorBoard scalar names. `progress` is a training_progress.TrainingProgress."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np


class TrainingDiverged(RuntimeError):
    """Training cannot go on: every update is skipped, or the weights are not finite.

    The entry scripts print the message and exit with EXIT_DIVERGED; the last
    (finite) checkpoint is left as it is.
    """


EXIT_DIVERGED = 3


class SkipLimit:
    """Counts consecutive skipped updates; `record` raises TrainingDiverged at `optimizer.max_consecutive_skips`.

    A run whose every update is skipped (learning rate far too high, weights
    that are NaN) would otherwise spin for ever without its step counter moving.
    """

    def __init__(self, hp: Any):
        self.limit = int(hp.optimizer.max_consecutive_skips)
        self.threshold = hp.optimizer.gradient_skip_threshold
        self.consecutive = 0

    def record(self, skipped: bool, progress: Any, grad_norm: float) -> None:
        self.consecutive = self.consecutive + 1 if skipped else 0
        if self.consecutive >= self.limit:
            raise TrainingDiverged(
                f"{self.consecutive} consecutive updates skipped at step {progress.global_step} "
                f"(optimizer.max_consecutive_skips = {self.limit}; last gradient norm {grad_norm:.4g}, "
                f"optimizer.gradient_skip_threshold = {self.threshold:g}): training diverged (learning rate too "
                "high? non-finite weights?); stopping without writing a checkpoint")


def non_finite_weights_message(what: str, step: int) -> str:
    return (f"{what} are not finite (NaN or inf) at step {step}; refusing to write them as a checkpoint "
            "(the previous checkpoint is kept)")


class StopFlag:
    """Records SIGTERM/SIGINT so the loop can finish its step, checkpoint and exit 0.

    A second SIGINT (Ctrl-C twice) aborts at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers (e.g. when called from a larger program)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: finishing the current step, then checkpointing.",
              file=sys.stderr, flush=True)


def ignore_stop_signals_in_worker(previous_init: Callable[[int], None] | None, worker_id: int) -> None:
    """A data-loader worker's init: ignore SIGTERM/SIGINT, which the main process handles.

    A signal to the whole process group (`timeout`, `scancel`, `kill -- -PGID`,
    Ctrl-C) reaches the workers too; torch's own worker handler would let them
    die and take the run down mid-step. The main process shuts them down.
    """
    for sig in StopFlag.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if previous_init is not None:
        previous_init(worker_id)


def check_run_folder(path: Path, run_name: str) -> None:
    """A run folder (logs-<name>) that exists must be a folder: a one-line error (exit 2) otherwise."""
    from hparams import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder: run.name = {run_name!r} keeps its logs and saved "
                          "configuration there; move the file away or choose another run.name")


def is_evaluation_step(step: int, interval: int, total_steps: int) -> bool:
    """Validate, log summaries and checkpoint after update `step`? After the first update (so that
    a short run shows a validation point, as in the originals), every `interval`, and at the end."""
    return step == 1 or step % interval == 0 or step >= total_steps


def format_train_line(progress: Any, total_steps: int, seconds: float, stats: dict, num_groups: int) -> str:
    """The one-line summary printed every train.logging_interval_in_steps."""
    return (f"step {progress.global_step}/{total_steps} | {seconds:.3f} s/step"
            f" | recon {stats['recon_report']:.4f} | kl {stats['kl_div']:.4f} | nelbo {stats['nelbo']:.4f}"
            f" | beta {stats['beta']:.4g} | active {stats['active_groups']}/{num_groups}"
            f" | grad_norm {stats['grad_norm']:.4g} | lr {stats['learning_rate']:.3g}"
            f" | skips {progress.gradient_skip_count}")


def train_scalars(progress: Any, seconds: float, stats: dict) -> dict[str, float]:
    """TensorBoard scalars of one logged training step."""
    scalars = {
        "Losses/reconstruction": stats["recon_report"], "Losses/kl_div": stats["kl_div"],
        "Losses/nelbo": stats["nelbo"], "Losses/loss": stats["loss"],
        "Schedules/beta": stats["beta"], "Schedules/learning_rate": stats["learning_rate"],
        "Stats/active_groups": stats["active_groups"], "Stats/grad_norm": stats["grad_norm"],
        "Stats/gradient_skip_count": progress.gradient_skip_count, "Stats/seconds_per_step": seconds,
    }
    scalars.update(per_group_scalars(stats["avg_kl_per_group"]))
    return scalars


def per_group_scalars(avg_kl_per_group: Any) -> dict[str, float]:
    """Average KL of each latent group, bits per latent dimension."""
    return {f"Latent_KL/group_{g:02d}": float(v) for g, v in enumerate(np.asarray(avg_kl_per_group))}
