"""Where a training run stands, and the error of a checkpoint that cannot be used: one definition for
both trainers and their checkpoints (a PyTorch file and a JAX folder record the same progress)."""
from __future__ import annotations

import dataclasses


class CheckpointError(RuntimeError):
    """A checkpoint (file or folder) that cannot be used, named in the message."""


@dataclasses.dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands: applied updates, skipped updates, data position."""
    global_step: int = 0
    gradient_skip_count: int = 0
    data_epoch: int = 0
    data_batch: int = 0  # batches of `data_epoch` already consumed

    @property
    def consumed_batches(self) -> int:
        """Train batches used so far (applied + skipped updates): what the per-step randomness counts."""
        return self.global_step + self.gradient_skip_count

    def after_step(self, skipped: bool) -> TrainingProgress:
        """The progress once one more batch has been trained on (its update applied unless `skipped`)."""
        return dataclasses.replace(self, data_batch=self.data_batch + 1,
                                   global_step=self.global_step + (0 if skipped else 1),
                                   gradient_skip_count=self.gradient_skip_count + (1 if skipped else 0))

    def next_epoch(self) -> TrainingProgress:
        return dataclasses.replace(self, data_epoch=self.data_epoch + 1, data_batch=0)

    def as_ints(self) -> list[int]:
        """The four counters, for comparing processes' starting points."""
        return list(dataclasses.astuple(self))
