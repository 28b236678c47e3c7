"""Training checkpoints in the original layout: one file `checkpoints-<name>`.

The file holds the original's five keys (`global_step`, `model_state_dict`,
`ema_model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`) plus
this project's resume keys (`format_version`, `gradient_skip_count`,
`data_epoch`, `data_batch`). Our `global_step` counts applied updates (SPEC
sections 6 and 12); the original saved the index of its last step instead,
which is converted on load.

Writes are atomic (temp file, fsync, rename), so a process killed mid-write
leaves the previous checkpoint intact; a full or read-only disk raises
DiskWriteError naming the file, after removing the temp file. With `run.max_allowed_checkpoints > 1`
the latest checkpoints are also kept, hard-linked, in
`checkpoints-<name>.history/global_step-<N>`.

A checkpoint of the original JAX code also loads (SPEC.md section 10): a
`checkpoints-<name>/` folder holding `checkpoint_<step>` (msgpack file or orbax
folder, where the original's README unzips the published models), or such a
file itself. It is converted in memory; the first save of a run resumed from
it moves that folder to `checkpoints-<name>.original-jax/` (nothing is
deleted) and writes this trainer's file in its place.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from efficient_vdvae_common.atomic_files import atomic_binary_file, temporary_files
from efficient_vdvae_common.disk_errors import disk_errors
from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from hparams import checkpoints_path

ORIGINAL_KEYS = ("global_step", "model_state_dict", "ema_model_state_dict",
                 "optimizer_state_dict", "scheduler_state_dict")
FORMAT_VERSION = 1
# In a state from `load_checkpoint`: the OriginalJaxState it was converted from (never saved).
ORIGINAL_JAX_KEY = "original_jax_state"
ORIGINAL_JAX_SUFFIX = ".original-jax"
LOADED_FROM_KEY = "loaded_from"  # added by load_checkpoint, never saved


def checkpoint_path(run_name: str, root: str | Path = ".") -> Path:
    return checkpoints_path(run_name, root)


def history_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".history")


def original_jax_backup(path: str | Path) -> Path:
    """Where the first save puts an original-JAX checkpoints folder found at `path`."""
    path = Path(path)
    return path.with_name(path.name + ORIGINAL_JAX_SUFFIX)


def _holds_original_jax(path: Path) -> bool:
    """A folder with `checkpoint_<step>` entries, or an original orbax `checkpoint_<step>` folder."""
    from efficient_vdvae_common.original_jax_checkpoint import CHECKPOINT_NAME, newest_checkpoint_in

    return path.is_dir() and (newest_checkpoint_in(path) is not None or bool(CHECKPOINT_NAME.match(path.name)))


def save_checkpoint(state: dict[str, Any], path: str | Path, max_allowed_checkpoints: int = 1) -> None:
    """Atomically replace `path` with `state`; keep the newest `max_allowed_checkpoints` in the history."""
    path = Path(path)
    with disk_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not _holds_original_jax(path):
        raise CheckpointError(f"cannot write checkpoint {path}: it is a folder (is this a JAX run of the same "
                              "name? use another run.name)")

    def move_original_jax_aside() -> None:
        # Resumed from the original JAX code's checkpoints: keep them beside ours, delete nothing.
        # Killed between this rename and the file's, `load_checkpoint` reads the moved folder.
        if not path.is_dir():
            return
        backup = original_jax_backup(path)
        if backup.exists():
            raise CheckpointError(f"cannot move the original JAX checkpoints {path} aside: {backup} exists")
        os.rename(path, backup)
        print(f"moved the original JAX checkpoints {path} to {backup}; {path} is now this trainer's "
              "checkpoint", flush=True)

    # A full or read-only disk: DiskWriteError naming `path`, the temp file removed, the previous file kept.
    # (torch.save into a file object reports a failed write as a RuntimeError whose context is the OSError.)
    with atomic_binary_file(path, " (the previous checkpoint is unchanged)", move_original_jax_aside) as file:
        torch.save(state, file)
    if max_allowed_checkpoints > 1:
        _add_to_history(path, int(state["global_step"]), max_allowed_checkpoints)


_HISTORY_ENTRY = re.compile(r"^global_step-(\d+)$")


def _history_entries(history: Path) -> list[Path]:
    """This trainer's entries of a history folder, oldest first (anything else is left alone)."""
    entries = [(int(m.group(1)), p) for p in history.iterdir() if (m := _HISTORY_ENTRY.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(entries)]


def check_history(path: str | Path) -> None:
    """CheckpointError naming the first entry of `checkpoints-<name>.history/` that this trainer did not write.

    Checked when a run starts, not when it first saves hours later: the trainer deletes old entries there.
    """
    history = history_dir(path)
    if not history.exists():
        return
    if not history.is_dir():
        raise CheckpointError(f"{history} is a file; the trainer keeps earlier checkpoints in a folder of that "
                              "name (move the file away)")
    for entry in sorted(history.iterdir()):
        if not (_HISTORY_ENTRY.match(entry.name) and entry.is_file()):
            raise CheckpointError(f"{entry} is not a checkpoint of this run: the trainer manages "
                                  f"{history}/ (keeps and deletes global_step-<N> files); move it out of there")


def _add_to_history(path: Path, global_step: int, keep: int) -> None:
    history = history_dir(path)
    with disk_errors(history, f" (the checkpoint {path} itself was written)"):
        history.mkdir(exist_ok=True)
    entry = history / f"global_step-{global_step}"
    with disk_errors(entry, f" (the checkpoint {path} itself was written)"):
        entry.unlink(missing_ok=True)
        try:
            os.link(path, entry)  # shares the bytes with the latest file
        except OSError:
            try:
                shutil.copy2(path, entry)
            except BaseException:
                entry.unlink(missing_ok=True)  # no partial copy among the history's checkpoints
                raise
        for old in _history_entries(history)[:-keep]:
            old.unlink()


def remove_stale_temp_files(path: str | Path) -> None:
    """Delete temp files left by a process killed while writing `path`."""
    for temp in temporary_files(path):
        temp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Read a checkpoint without executing code (weights_only); None when there is none yet.

    An original-JAX checkpoint (folder or msgpack file) comes back converted (see the module doc).
    """
    path = Path(path)
    check_history(path)
    if not path.exists():
        if _holds_original_jax(original_jax_backup(path)):  # a save was killed between its two renames
            return _load_original_jax(original_jax_backup(path), map_location)
        return None
    if path.is_dir():
        if _holds_original_jax(path):
            return _load_original_jax(path, map_location)
        raise CheckpointError(f"{path} is a directory; the PyTorch trainer expects the single checkpoint "
                              "file of the original layout (is this a JAX run of the same name?)")
    with open(path, "rb") as file:
        head = file.read(2)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): a copy or a save that did not finish "
                              "(this project's saves are atomic; restore the file or delete it to start afresh)")
    from efficient_vdvae_common.original_jax_checkpoint import looks_like_original_msgpack

    if looks_like_original_msgpack(head):
        return _load_original_jax(path, map_location)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt or not a PyTorch checkpoint): "
                              f"{detail}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [key for key in ORIGINAL_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the keys {missing}")
    state[LOADED_FROM_KEY] = str(path)
    return state


def _load_original_jax(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """An original-JAX checkpoint as this module's state dict (weights in the PyTorch layout)."""
    from efficient_vdvae_common.original_jax_checkpoint import OriginalCheckpointError

    try:
        from efficient_vdvae_jax.original_checkpoint import read_original_checkpoint

        original = read_original_checkpoint(path, jax_on_cpu_only=True)  # numpy, JAX kept off the GPU
    except OriginalCheckpointError as error:
        raise CheckpointError(str(error)) from None

    def tensors(which: str) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(map_location) for k, v in original.torch_state_dict(which).items()}

    print(f"converting {original.source}, a checkpoint of the original JAX code (step {original.step}); "
          f"{original.defaults_note()}", flush=True)
    return {"global_step": original.step, "model_state_dict": tensors("params"),
            "ema_model_state_dict": tensors("ema_params"), "optimizer_state_dict": None,
            "scheduler_state_dict": None, ORIGINAL_JAX_KEY: original, LOADED_FROM_KEY: str(original.source)}


def is_original_checkpoint(state: dict[str, Any]) -> bool:
    """True for a file written by the original Efficient-VDVAE PyTorch code."""
    return "format_version" not in state and ORIGINAL_JAX_KEY not in state


def check_fits(state: dict[str, Any], model: nn.Module, path: str | Path) -> None:
    """CheckpointError naming the first parameter whose saved shape differs from `model`'s (both shapes)."""
    if ORIGINAL_JAX_KEY in state:
        from efficient_vdvae_common.original_jax_checkpoint import OriginalCheckpointError
        from efficient_vdvae_common.parameter_layouts import flax_shape

        wanted = {key: flax_shape(key, tuple(value.shape)) for key, value in model.state_dict().items()}
        try:
            state[ORIGINAL_JAX_KEY].check_fits(wanted)
        except OriginalCheckpointError as error:
            raise CheckpointError(str(error)) from None
        return
    from efficient_vdvae_common.parameter_layouts import first_shape_mismatch

    for name in ("model_state_dict", "ema_model_state_dict"):
        mismatch = first_shape_mismatch(state[name], model.state_dict())
        if mismatch:
            key, saved_shape, wanted_shape = mismatch
            raise CheckpointError(
                f"checkpoint {path} does not fit the model config: parameter {key} ({name}) is {saved_shape} "
                f"there and {wanted_shape} in the config (a checkpoint of another architecture? a run's model "
                "settings cannot change; use another run.name)")


def training_state(progress: TrainingProgress, model: nn.Module, ema_model: nn.Module,
                   optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
                   ) -> dict[str, Any]:
    """The dict `save_checkpoint` writes. `model` must be unwrapped (no DDP/compile prefixes)."""
    return {
        "global_step": progress.global_step,
        "model_state_dict": model.state_dict(),
        "ema_model_state_dict": ema_model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(),
        "format_version": FORMAT_VERSION,
        "gradient_skip_count": progress.gradient_skip_count,
        "data_epoch": progress.data_epoch,
        "data_batch": progress.data_batch,
    }


def restore_training_state(state: dict[str, Any], model: nn.Module, ema_model: nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                           resume_from_ema: bool = False) -> TrainingProgress:
    """Load `state` into freshly built objects; returns the progress to continue from.

    `resume_from_ema` starts the trained weights from the EMA weights (the EMA
    itself is restored either way). A checkpoint that does not fit the model or
    the optimizer raises CheckpointError naming the file.
    """
    path = state.get(LOADED_FROM_KEY, "the checkpoint")
    check_fits(state, model, path)
    model.load_state_dict(state["ema_model_state_dict" if resume_from_ema else "model_state_dict"])
    ema_model.load_state_dict(state["ema_model_state_dict"])
    if ORIGINAL_JAX_KEY in state:
        original = state[ORIGINAL_JAX_KEY]
        set_adam_moments(optimizer, model, original.optimizer_count, original.torch_state_dict("mu"),
                         original.torch_state_dict("nu"))
        progress = TrainingProgress(global_step=original.step)
    elif is_original_checkpoint(state):
        # The original saved the index of its last step: step k means k + 1 updates ran.
        global_step = int(state["global_step"]) + 1
        _load_original_optimizer_state(state["optimizer_state_dict"], state["model_state_dict"], model, optimizer)
        progress = TrainingProgress(global_step=global_step)
    else:
        _check_optimizer_kind(state["optimizer_state_dict"], optimizer, path)
        try:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit the configured "
                                  f"optimizer ({error})") from None
        progress = TrainingProgress(global_step=int(state["global_step"]),
                                    gradient_skip_count=int(state["gradient_skip_count"]),
                                    data_epoch=int(state["data_epoch"]),
                                    data_batch=int(state["data_batch"]))
        scheduler.load_state_dict(state["scheduler_state_dict"])
    if is_original_checkpoint(state) or ORIGINAL_JAX_KEY in state:
        # The originals' scheduler classes (and step rules, SPEC section 12) are not ours:
        # set our closed-form learning rate at the restored step instead.
        scheduler.last_epoch = progress.global_step - 1
        with warnings.catch_warnings():
            # No optimizer step ran yet in this process, which torch warns about; harmless here.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step", category=UserWarning)
            scheduler.step()
    return progress


def second_moment_key(optimizer: torch.optim.Optimizer) -> str:
    """torch's name of the second moment: the infinity norm for Adamax, the squared-gradient EMA otherwise."""
    return "exp_inf" if isinstance(optimizer, torch.optim.Adamax) else "exp_avg_sq"


def _optimizer_name(group_keys: set[str], moment_keys: set[str]) -> str:
    """torch's Adam groups have `amsgrad`, RAdam's `decoupled_weight_decay` alone, Adamax's neither."""
    if "exp_inf" in moment_keys or not group_keys & {"amsgrad", "decoupled_weight_decay"}:
        return "Adamax"
    return "Adam" if "amsgrad" in group_keys else "RAdam"


def _check_optimizer_kind(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Any) -> None:
    """Refuse a checkpoint whose optimizer is of another type than the configured one (its moments differ)."""
    saved_groups = saved.get("param_groups") or [{}]
    saved_moments = {key for entry in saved.get("state", {}).values() for key in entry}
    ours = optimizer.param_groups[0].keys()
    saved_name = _optimizer_name(set(saved_groups[0]), saved_moments)
    our_name = _optimizer_name(set(ours), {second_moment_key(optimizer)})
    if saved_name != our_name:
        raise CheckpointError(f"checkpoint {path} was trained with optimizer {saved_name}, the config says "
                              f"optimizer.type = {our_name!r}: an optimizer cannot change on resume (set it back, "
                              "or start a new run.name)")


def set_adam_moments(optimizer: torch.optim.Optimizer, model: nn.Module, count: int,
                     first: dict[str, Any], second: dict[str, Any]) -> None:
    """Give every parameter of `model` the Adam-family state of a JAX optimizer (one update `count` for all):
    `first`/`second` moments by PyTorch key, in the PyTorch layout. Count 0 (no update yet) leaves the state
    empty, as torch's own fresh optimizer; a zero moment is a real moment (it keeps the bias correction's step).
    """
    if not count:
        return
    key = second_moment_key(optimizer)
    for name, parameter in model.named_parameters():
        optimizer.state[parameter] = {
            "step": torch.tensor(float(count)),
            "exp_avg": torch.as_tensor(first[name]).to(parameter.device),
            key: torch.as_tensor(second[name]).to(parameter.device)}


def _load_original_optimizer_state(saved: dict[str, Any], saved_model_state: dict[str, Any], model: nn.Module,
                                   optimizer: torch.optim.Optimizer) -> None:
    """Map the original's single-group optimizer state onto our (possibly several) groups.

    The original optimised `model.parameters()` in one group, so its state is
    indexed by the position of a parameter in ITS registration order, which
    the saved state_dict's key order records (our modules may register in
    another order). Ours is indexed by position in our group order.
    """
    named = dict(model.named_parameters())
    saved_names = [name for name in saved_model_state if name in named]
    saved_indices = [index for group in saved["param_groups"] for index in group["params"]]
    if len(saved_indices) != len(saved_names) or len(saved_names) != len(named):
        raise CheckpointError(f"the original optimizer state covers {len(saved_indices)} parameters, "
                              f"the model has {len(named)}")
    index_of = {id(named[name]): index for name, index in zip(saved_names, saved_indices)}
    state: dict[int, Any] = {}
    our_index = 0
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            original_state = saved["state"].get(index_of[id(parameter)])
            if original_state is not None:
                # torch's optimisers keep `step` as a tensor; the original stored an int.
                state[our_index] = {key: torch.tensor(float(value)) if key == "step" and not torch.is_tensor(value)
                                    else value for key, value in original_state.items()}
            our_index += 1
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
