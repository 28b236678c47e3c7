"""Training checkpoints in the original layout: one file `checkpoints-<name>`.

The file holds the original's five keys (`global_step`, `model_state_dict`,
`ema_model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`) plus
this project's resume keys (`format_version`, `gradient_skip_count`,
`data_epoch`, `data_batch`). Our `global_step` counts applied updates (SPEC
sections 6 and 12); the original saved the index of its last step instead,
which is converted on load.

Writes are atomic (temp file, fsync, rename), so a process killed mid-write
leaves the previous checkpoint intact. With `run.max_allowed_checkpoints > 1`
the latest checkpoints are also kept, hard-linked, in
`checkpoints-<name>.history/global_step-<N>`.
"""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hparams import checkpoints_path

ORIGINAL_KEYS = ("global_step", "model_state_dict", "ema_model_state_dict",
                 "optimizer_state_dict", "scheduler_state_dict")
FORMAT_VERSION = 1
_TEMP_MARKER = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, named in the message."""


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands: applied updates, skipped updates, data position."""
    global_step: int = 0
    gradient_skip_count: int = 0
    data_epoch: int = 0
    data_batch: int = 0  # batches of `data_epoch` already consumed


def checkpoint_path(run_name: str, root: str | Path = ".") -> Path:
    return checkpoints_path(run_name, root)


def history_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".history")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path, max_allowed_checkpoints: int = 1) -> None:
    """Atomically replace `path` with `state`; keep the newest `max_allowed_checkpoints` in the history."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}{_TEMP_MARKER}{os.getpid()}")
    with open(temp, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)
    if max_allowed_checkpoints > 1:
        _add_to_history(path, int(state["global_step"]), max_allowed_checkpoints)


def _add_to_history(path: Path, global_step: int, keep: int) -> None:
    history = history_dir(path)
    history.mkdir(exist_ok=True)
    entry = history / f"global_step-{global_step}"
    entry.unlink(missing_ok=True)
    try:
        os.link(path, entry)  # shares the bytes with the latest file
    except OSError:
        shutil.copy2(path, entry)
    entries = sorted(history.glob("global_step-*"), key=lambda p: int(p.name.split("-")[-1]))
    for old in entries[:-keep]:
        old.unlink()


def remove_stale_temp_files(path: str | Path) -> None:
    """Delete temp files left by a process killed while writing `path`."""
    path = Path(path)
    for temp in path.parent.glob(f"{path.name}{_TEMP_MARKER}*"):
        temp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Read a checkpoint without executing code (weights_only); None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; the PyTorch trainer expects the single checkpoint "
                              "file of the original layout (is this a JAX run of the same name?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    missing = [key for key in ORIGINAL_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the keys {missing}")
    return state


def is_original_checkpoint(state: dict[str, Any]) -> bool:
    """True for a file written by the original Efficient-VDVAE code."""
    return "format_version" not in state


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
    itself is restored either way).
    """
    model.load_state_dict(state["ema_model_state_dict" if resume_from_ema else "model_state_dict"])
    ema_model.load_state_dict(state["ema_model_state_dict"])
    if is_original_checkpoint(state):
        # The original saved the index of its last step: step k means k + 1 updates ran.
        global_step = int(state["global_step"]) + 1
        _load_original_optimizer_state(state["optimizer_state_dict"], state["model_state_dict"], model, optimizer)
        progress = TrainingProgress(global_step=global_step)
    else:
        optimizer.load_state_dict(state["optimizer_state_dict"])
        progress = TrainingProgress(global_step=int(state["global_step"]),
                                    gradient_skip_count=int(state["gradient_skip_count"]),
                                    data_epoch=int(state["data_epoch"]),
                                    data_batch=int(state["data_batch"]))
        scheduler.load_state_dict(state["scheduler_state_dict"])
    if is_original_checkpoint(state):
        # The original's scheduler classes (and step rules, SPEC section 12) are not ours:
        # set our closed-form learning rate at the restored step instead.
        scheduler.last_epoch = progress.global_step - 1
        with warnings.catch_warnings():
            # No optimizer step ran yet in this process, which torch warns about; harmless here.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step", category=UserWarning)
            scheduler.step()
    return progress


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
