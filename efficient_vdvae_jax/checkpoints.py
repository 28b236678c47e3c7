"""Training checkpoints of the JAX trainer: an orbax CheckpointManager folder `checkpoints-<name>/`.

Each checkpoint `checkpoints-<name>/<n>/` holds the whole `TrainState`
(params, EMA params, optimiser state, applied-update count, skip count) and,
as JSON, the data position to resume from. `<n>` counts the train batches
consumed (applied + skipped updates), which grows with every step, so a final
checkpoint after a skipped update never collides with an earlier one; without
skips it equals the global step. Orbax writes into a temporary folder and
renames it when complete, so a process killed mid-write leaves the previous
checkpoint intact; a full or read-only disk raises DiskWriteError naming the
folder, after removing that temporary folder. Only the newest `run.max_allowed_checkpoints` are kept. A
step folder whose files cannot be read (copied in part, damaged) is skipped
and the newest readable one restored, saying so; the trainer also renames it
`<n>.unreadable` (read-only tools leave the user's folder as it is). Any other
failure (devices, memory, a missing dependency) is raised as it is.

A checkpoint of the original JAX code in the same folder
(`checkpoints-<name>/checkpoint_<step>`, msgpack file or orbax folder, where the
original's README unzips the published models) is restored when the folder
holds none of ours: converted in memory (SPEC.md section 10); the first save
writes ours beside it, which is never deleted.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

from efficient_vdvae_common.disk_errors import disk_errors, quiet_disk_error_logs
from efficient_vdvae_common.original_jax_checkpoint import (CHECKPOINT_NAME, OriginalCheckpointError,
                                                            OriginalJaxState, newest_checkpoint_in)
from efficient_vdvae_common.parameter_layouts import first_shape_mismatch
from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.train_step import TrainState, create_train_state, init_params
from hparams import checkpoints_path

STATE_ITEM = "state"
PROGRESS_ITEM = "progress"
PROGRESS_FILE = "metadata"  # what orbax's JsonCheckpointHandler writes in the item folder
ORBAX_TEMPORARY_MARKER = ".orbax-checkpoint-tmp"  # orbax writes step <n> into `<n>.orbax-checkpoint-tmp*`


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another model (an older checkpoint would not fit either)."""


class UnreadableCheckpoint(CheckpointError):
    """A step folder whose metadata or array files are missing or cannot be parsed."""


UNREADABLE_SUFFIX = ".unreadable"
OPTIMIZER_KEY = "optimizer_type"  # in the progress JSON


def _canonical_optimizer(name: str) -> str:
    return "RAdam" if name == "Radam" else name  # the JAX original's spelling


def checkpoint_dir(run_name: str, root: str | Path = ".") -> Path:
    return checkpoints_path(run_name, root).resolve()


def abstract_train_state(hp: Any, model: UniversalAutoEncoder, sharding: NamedSharding) -> TrainState:
    """What `TrainingCheckpoints.restore` restores into: the train state's shapes, dtypes and (replicated)
    sharding, without computing it."""
    def fresh_state(rng):
        return create_train_state(hp, init_params(hp, model, rng))

    shapes = jax.eval_shape(fresh_state, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# The threads of the default executor of an event loop (asyncio.to_thread): orbax writes its files there.
_EXECUTOR_THREAD_PREFIX = "asyncio_"


def _settle_failed_writes(timeout_s: float = 30.0) -> None:
    """Let the writes of a failed orbax save that are still running end before its folder is removed.

    The save raises with the first failed write while the others go on in executor threads (orbax then
    closes its event loop, which lets those threads exit once their write is done); a write ending after
    the removal would fail on a missing folder or create part of it again. The garbage collector then
    runs the finalisers of the tasks left behind now, while their reports are kept quiet.
    """
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.startswith(_EXECUTOR_THREAD_PREFIX) and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    gc.collect()


class TrainingCheckpoints:
    """Save and restore (TrainState, TrainingProgress) pairs of one run."""

    def __init__(self, directory: str | Path, max_to_keep: int, optimizer_type: str | None = None):
        """`optimizer_type` (optimizer.type): saved with each checkpoint and checked on restore, since
        Adamax, Adam and RAdam keep the same moment trees (None: not checked, not saved)."""
        self.directory = Path(directory).resolve()
        self.optimizer_type = None if optimizer_type is None else _canonical_optimizer(optimizer_type)
        if self.directory.exists() and not self.directory.is_dir():
            if self.directory.stat().st_size == 0:
                raise CheckpointError(f"{self.directory} is an empty file (0 bytes), not a checkpoint folder: the "
                                      "JAX trainer keeps its checkpoints in a folder of that name (remove the file)")
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
        """The newest complete checkpoint's number (ours, else an original-JAX one's step), None when none."""
        if not self.directory.is_dir():
            return None
        self.manager.reload()
        step = self.manager.latest_step()
        if step is None and self._original_entry() is not None:
            return int(CHECKPOINT_NAME.match(self._original_entry().name).group(1))
        return step

    def _original_entry(self) -> Path | None:
        return newest_checkpoint_in(self.directory)

    def save(self, state: TrainState, progress: TrainingProgress) -> None:
        """Write checkpoint `progress.consumed_batches`. A full or read-only disk raises DiskWriteError
        naming the folder, after removing orbax's temporary folder of the step (earlier steps are kept)."""
        saved = dataclasses.asdict(progress)
        if self.optimizer_type is not None:
            saved[OPTIMIZER_KEY] = self.optimizer_type
        step = progress.consumed_batches
        # orbax logs the traceback of a failed background write before raising it: kept off the one line.
        with disk_errors(self.directory, " (the earlier checkpoints are unchanged)"), \
                quiet_disk_error_logs("absl"):
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.manager.save(step, args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    PROGRESS_ITEM: ocp.args.JsonSave(saved),
                }))
                self.manager.wait_until_finished()
            except BaseException:
                _settle_failed_writes()
                self.remove_temporary_folders(step)
                raise

    def remove_temporary_folders(self, step: int | None = None) -> list[Path]:
        """Delete orbax's unfinished `<step>.orbax-checkpoint-tmp*` folders (of `step`, or all); the removed."""
        if not self.directory.is_dir():
            return []
        pattern = f"{'*' if step is None else step}{ORBAX_TEMPORARY_MARKER}*"
        removed = sorted(self.directory.glob(pattern))
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        return removed

    def restore(self, abstract_state: TrainState, checkpoint: int | None = None,
                move_unreadable_aside: bool = False) -> tuple[TrainState, TrainingProgress]:
        """The state, laid out as `abstract_state` (jax.ShapeDtypeStruct leaves with shardings), and progress.

        Without `checkpoint`: the newest readable one; newer steps whose files are unreadable are skipped,
        saying so, and renamed `<n>.unreadable` only with `move_unreadable_aside` (the trainer, which will
        write new steps there; read-only tools never rename the user's folders).
        """
        if checkpoint is not None:
            return self._restore(abstract_state, checkpoint)
        if self.latest() is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        steps = sorted(self.manager.all_steps(), reverse=True)
        for index, step in enumerate(steps):
            try:
                return self._restore(abstract_state, step)
            except UnreadableCheckpoint as error:
                older = steps[index + 1:]
                if not older and self._original_entry() is None:
                    raise
                fallback = older[0] if older else self._original_entry()
                if move_unreadable_aside:
                    aside = self.directory / f"{step}{UNREADABLE_SUFFIX}"
                    os.rename(self.directory / str(step), aside)
                    self.manager.reload()
                    print(f"{error}; moved it to {aside} and fell back to the newest complete checkpoint "
                          f"({fallback})", flush=True)
                else:
                    print(f"{error}; fell back to the newest complete checkpoint ({fallback}), leaving the "
                          "damaged one in place", flush=True)
        return restore_original(self._original_entry(), abstract_state)

    def _restore(self, abstract_state: TrainState, checkpoint: int) -> tuple[TrainState, TrainingProgress]:
        self._check_param_shapes(checkpoint, abstract_state)
        where = self.directory / str(checkpoint)
        try:
            restored = self.manager.restore(checkpoint, args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                PROGRESS_ITEM: ocp.args.JsonRestore(),
            }))
        except Exception as error:
            # Orbax raises many types for missing, partial or damaged files, and the same types for
            # device, sharding or memory failures: decide from the files themselves.
            damage = _file_damage(where)
            if damage is None:
                raise
            raise UnreadableCheckpoint(f"checkpoint {where} is incomplete or corrupt ({damage})") from None
        try:
            progress = TrainingProgress(**{field.name: int(restored[PROGRESS_ITEM][field.name])
                                           for field in dataclasses.fields(TrainingProgress)})
        except (KeyError, TypeError, ValueError) as error:
            raise UnreadableCheckpoint(f"checkpoint {where} is incomplete or corrupt (its progress file lacks "
                                       f"{error})") from None
        saved_optimizer = restored[PROGRESS_ITEM].get(OPTIMIZER_KEY)
        if None not in (saved_optimizer, self.optimizer_type) and saved_optimizer != self.optimizer_type:
            raise CheckpointMismatch(
                f"checkpoint {where} was trained with optimizer {saved_optimizer}, the "
                f"config says optimizer.type = {self.optimizer_type!r}: an optimizer cannot change on resume (set "
                "it back, or start a new run.name)")
        return restored[STATE_ITEM], progress

    def _check_param_shapes(self, checkpoint: int, abstract_state: TrainState) -> None:
        """Name the first parameter whose saved shape differs from the config's (before orbax reads any array)."""
        where = self.directory / str(checkpoint)
        try:
            saved = _shapes_by_name(self.manager.item_metadata(checkpoint)[STATE_ITEM])
        except (ImportError, MemoryError):
            raise
        except Exception as error:  # missing or foreign metadata (reading it touches no device)
            raise UnreadableCheckpoint(f"checkpoint {where} is incomplete or corrupt (metadata: "
                                       f"{_first_line(error)})") from None
        saved = {name[1:]: shape for name, shape in sorted(saved.items()) if name[:1] == ("params",)}
        mismatch = first_shape_mismatch(saved, dict(sorted(_shapes_by_name(abstract_state.params).items())))
        if mismatch:
            name, saved_shape, wanted_shape = mismatch
            raise CheckpointMismatch(
                f"checkpoint {where} does not fit the model config: parameter {'/'.join(name)} is "
                f"{saved_shape} there and {wanted_shape} in the config "
                "(a run's model settings cannot change; use another run.name)")

    def close(self) -> None:
        self.manager.close()


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines()[0] if str(error) else type(error).__name__)[:300]


def _file_damage(step: Path) -> str | None:
    """Why the files of step folder `step` cannot be read, None when they can: every array read on the host
    (no device, no sharding) and the progress JSON parsed."""
    import json

    from efficient_vdvae_jax.original_checkpoint import restore_orbax_as_numpy

    if not (step / STATE_ITEM).is_dir():
        return f"no {STATE_ITEM}/ folder"
    progress = step / PROGRESS_ITEM / PROGRESS_FILE
    try:
        json.loads(progress.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{PROGRESS_ITEM}/{PROGRESS_FILE}: {_first_line(error)}"
    try:
        restore_orbax_as_numpy(step / STATE_ITEM)
    except OriginalCheckpointError as error:
        return _first_line(error)
    return None


def _shapes_by_name(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path of names: shape} of a pytree of arrays or array metadata."""
    def name(key) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    return {tuple(name(k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- Checkpoints of the original JAX code.

def train_state_from_original(original: OriginalJaxState, abstract_state: TrainState) -> TrainState:
    """Our TrainState (laid out as `abstract_state`) holding an original checkpoint's weights, EMA weights,
    Adam-family moments and counts; the skip counter starts at 0 (the original kept none)."""
    wanted = {".".join(flax_key(path)): shape for path, shape in _shapes_by_name(abstract_state.params).items()}
    try:
        original.check_fits(wanted)
    except OriginalCheckpointError as error:
        raise CheckpointMismatch(str(error)) from None

    fresh = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract_state.opt_state)
    opt_state = with_moments(fresh, original.optimizer_count, original.flax_tree("mu"), original.flax_tree("nu"),
                             original.schedule_count, f"cannot restore {original.source}: ")
    state = TrainState(step=jnp.asarray(original.step, jnp.int32), params=_as_jax(original.flax_tree("params")),
                       ema_params=_as_jax(original.flax_tree("ema_params")), opt_state=opt_state,
                       skipped_updates=jnp.zeros((), jnp.int32))
    # Through host memory: jax.device_put of an array already on a device breaks across processes; every
    # process read the same file, so each places the same values on its devices of the sharding.
    return jax.tree.map(lambda leaf, like: jax.device_put(np.asarray(leaf, dtype=like.dtype), like.sharding),
                        state, abstract_state)


def with_moments(opt_state: tuple, count: int, mu, nu, schedule_count: int, culprit: str = "") -> tuple:
    """`opt_state` (an optax chain's state) with the Adam-family moments and count and the learning-rate
    schedule's count replaced; CheckpointError (`culprit` + why) when the chain keeps no Adam-family moments."""
    if not any(isinstance(state, optax.ScaleByAdamState) for state in opt_state):
        raise CheckpointError(f"{culprit}the configured optimizer keeps no Adam-family moments "
                              f"({[type(state).__name__ for state in opt_state]})")

    def replace(state):
        if isinstance(state, optax.ScaleByAdamState):
            return state._replace(count=jnp.asarray(count, state.count.dtype), mu=_as_jax(mu), nu=_as_jax(nu))
        if isinstance(state, optax.ScaleByScheduleState):
            return state._replace(count=jnp.asarray(schedule_count, state.count.dtype))
        return state

    return tuple(replace(state) for state in opt_state)


def flax_key(path: tuple[str, ...]) -> tuple[str, ...]:
    """A flax path as the PyTorch key's parts (the names OriginalJaxState uses)."""
    from efficient_vdvae_common.parameter_layouts import flax_path_to_torch_key

    return tuple(flax_path_to_torch_key(path).split("."))


def _as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def restore_original(path: str | Path, abstract_state: TrainState) -> tuple[TrainState, TrainingProgress]:
    """An original-JAX checkpoint (file, folder or `checkpoints-<name>/`) as (TrainState, progress)."""
    from efficient_vdvae_jax.original_checkpoint import read_original_checkpoint

    try:
        original = read_original_checkpoint(path)
    except OriginalCheckpointError as error:
        raise CheckpointError(str(error)) from None
    state = train_state_from_original(original, abstract_state)
    print(f"restored {original.source}, a checkpoint of the original JAX code (step {original.step}); "
          f"{original.defaults_note()}", flush=True)
    return state, TrainingProgress(global_step=original.step)
