"""What both trainers share around the loop: stop signals, the log line and
the TensorBoard scalar names. `progress` is either framework's
TrainingProgress (it needs `global_step` and `gradient_skip_count`)."""
from __future__ import annotations

import signal
import sys
from typing import Any

import numpy as np


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
