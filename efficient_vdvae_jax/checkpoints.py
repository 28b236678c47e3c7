"""Training checkpoints of the JAX trainer: an orbax CheckpointManager folder `checkpoints-<name>/`.

Each checkpoint `checkpoints-<name>/<n>/` holds the whole `TrainState`
(params, EMA params, optimiser state, applied-update count, skip count) and,
as JSON, the data position to resume from. `<n>` counts the train batches
consumed (applied + skipped updates), which grows with every step, so a final
checkpoint after a skipped update never collides with an earlier one; without
skips it equals the global step. Orbax writes into a temporary folder and
renames it when complete, so a process killed mid-write leaves the previous
checkpoint intact. Only the newest `run.max_allowed_checkpoints` are kept.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from efficient_vdvae_jax.train_step import TrainState
from hparams import checkpoints_path

STATE_ITEM = "state"
PROGRESS_ITEM = "progress"


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used, named in the message."""


@dataclasses.dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands: applied updates, skipped updates, data position."""
    global_step: int = 0
    gradient_skip_count: int = 0
    data_epoch: int = 0
    data_batch: int = 0  # batches of `data_epoch` already consumed

    @property
    def consumed_batches(self) -> int:
        return self.global_step + self.gradient_skip_count


def checkpoint_dir(run_name: str, root: str | Path = ".") -> Path:
    return checkpoints_path(run_name, root).resolve()


class TrainingCheckpoints:
    """Save and restore (TrainState, TrainingProgress) pairs of one run."""

    def __init__(self, directory: str | Path, max_to_keep: int):
        self.directory = Path(directory).resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is a file; the JAX trainer keeps its checkpoints in a folder "
                                  "of that name (is this a PyTorch run of the same name? use another run.name)")
        if max_to_keep < 1:
            raise CheckpointError(f"run.max_allowed_checkpoints must be at least 1, got {max_to_keep}")
        # Synchronous saves: the loop continues only once the checkpoint is on disk, which a
        # stop signal (and the tests) rely on; checkpoints are rare next to train steps.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            STATE_ITEM: ocp.StandardCheckpointHandler(), PROGRESS_ITEM: ocp.JsonCheckpointHandler()})

    def latest(self) -> int | None:
        """The newest complete checkpoint's number, None when there is none."""
        if not self.directory.is_dir():
            return None
        self.manager.reload()
        return self.manager.latest_step()

    def save(self, state: TrainState, progress: TrainingProgress) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager.save(progress.consumed_batches, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state),
            PROGRESS_ITEM: ocp.args.JsonSave(dataclasses.asdict(progress)),
        }))
        self.manager.wait_until_finished()

    def restore(self, abstract_state: TrainState, checkpoint: int | None = None
                ) -> tuple[TrainState, TrainingProgress]:
        """The state, laid out as `abstract_state` (jax.ShapeDtypeStruct leaves with shardings), and progress."""
        checkpoint = self.latest() if checkpoint is None else checkpoint
        if checkpoint is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self._check_param_shapes(checkpoint, abstract_state)
        try:
            restored = self.manager.restore(checkpoint, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                PROGRESS_ITEM: ocp.args.JsonRestore(),
            }))
            progress = TrainingProgress(**{field.name: int(restored[PROGRESS_ITEM][field.name])
                                           for field in dataclasses.fields(TrainingProgress)})
        except Exception as error:  # orbax raises many types for missing, foreign or mismatched trees
            raise CheckpointError(f"cannot restore checkpoint {self.directory / str(checkpoint)} "
                                  f"(does it belong to another model config?): {error}") from error
        return restored[STATE_ITEM], progress

    def _check_param_shapes(self, checkpoint: int, abstract_state: TrainState) -> None:
        """Name the first parameter whose saved shape differs from the config's (before orbax reads any array)."""
        where = self.directory / str(checkpoint)
        try:
            saved = _shapes_by_name(self.manager.item_metadata(checkpoint)[STATE_ITEM])
        except Exception as error:  # missing or foreign metadata
            raise CheckpointError(f"cannot read checkpoint {where}: {error}") from error
        saved = {name[1:]: shape for name, shape in saved.items() if name[:1] == ("params",)}
        wanted = _shapes_by_name(abstract_state.params)
        for name in sorted(saved.keys() | wanted.keys()):
            if saved.get(name) != wanted.get(name):
                raise CheckpointError(
                    f"checkpoint {where} does not fit the model config: parameter {'/'.join(name)} is "
                    f"{saved.get(name, 'missing')} there and {wanted.get(name, 'missing')} in the config "
                    "(a run's model settings cannot change; use another run.name)")

    def close(self) -> None:
        self.manager.close()


def _shapes_by_name(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path of names: shape} of a pytree of arrays or array metadata."""
    def name(key) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    return {tuple(name(k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
