"""Read checkpoints of the original JAX implementation (both of its formats) without any of its code.

- msgpack (older flax, the published checkpoints): one file, decoded with
  `flax.serialization.msgpack_restore`, which builds numpy arrays and runs
  nothing from the file.
- orbax (the same code under current flax): a PyTree folder, restored with
  orbax's PyTreeCheckpointer as numpy arrays on the host (never on a device).

`read_original_checkpoint(path)` takes either, or a `checkpoints-<name>/`
folder holding `checkpoint_<step>` entries (the newest is read), and returns
efficient_vdvae_common.original_jax_checkpoint.OriginalJaxState. Both
frameworks import this module (it needs flax and orbax, not our models).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from efficient_vdvae_common.original_jax_checkpoint import (OriginalCheckpointError, OriginalJaxState,
                                                            looks_like_original_msgpack, newest_checkpoint_in,
                                                            parse_train_state)

ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def is_orbax_pytree(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in ORBAX_MARKERS)


def is_original_checkpoint(path: str | Path) -> bool:
    """True for an original msgpack file, an original orbax folder, or a folder holding `checkpoint_<step>`s."""
    path = Path(path)
    if path.is_dir():
        return original_checkpoint_in(path) is not None
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        return looks_like_original_msgpack(file.read(2))


def original_checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint a folder stands for: itself when it is an original orbax `checkpoint_<step>`, else its
    newest `checkpoint_<step>` entry, else None."""
    if folder.name.startswith("checkpoint_") and is_orbax_pytree(folder):
        return folder
    return newest_checkpoint_in(folder)


def read_original_checkpoint(path: str | Path, jax_on_cpu_only: bool = False) -> OriginalJaxState:
    """The original train state at `path`; OriginalCheckpointError naming the file when it cannot be used.

    `jax_on_cpu_only`: for a process that uses JAX only to read this file (the PyTorch side): keeps JAX off
    the GPU (see `keep_jax_on_the_cpu`).
    """
    path = Path(path)
    if not path.exists():
        raise OriginalCheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        if is_orbax_pytree(path):
            if jax_on_cpu_only:
                keep_jax_on_the_cpu()
            return parse_train_state(restore_orbax_as_numpy(path), path)
        entry = newest_checkpoint_in(path)
        if entry is None:
            raise OriginalCheckpointError(f"{path} holds no checkpoint_<step> of the original JAX code")
        return read_original_checkpoint(entry, jax_on_cpu_only)
    return parse_train_state(_restore_msgpack(path), path)


def keep_jax_on_the_cpu() -> None:
    """Restrict JAX to the CPU unless this process already started it.

    Orbax asks JAX for the process index, which starts JAX's backends, and with jax[cuda] installed the
    GPU backend takes most of the GPU's memory when it starts: a PyTorch process must not pay that.
    """
    import jax

    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # another JAX layout: leave the platforms alone
        return
    if not backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def _restore_msgpack(path: Path) -> dict:
    from flax import serialization

    data = path.read_bytes()
    if not data:
        raise OriginalCheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or download?")
    if not looks_like_original_msgpack(data[:2]):
        raise OriginalCheckpointError(f"{path} is not a checkpoint of the original JAX code (not a msgpack "
                                      "train state; a PyTorch checkpoint? use to-jax)")
    try:
        return serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises ValueError and others for cut-off or damaged bytes
        raise OriginalCheckpointError(f"checkpoint {path} is truncated or corrupt ({len(data)} bytes; "
                                      f"msgpack: {error})") from None


def restore_orbax_as_numpy(path: Path) -> dict:
    """An orbax PyTree folder as nested dicts/lists of numpy arrays (read on the host, never put on a device);
    OriginalCheckpointError naming the folder when its files are missing or damaged."""
    import jax
    import orbax.checkpoint as ocp

    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            path = path.resolve()  # orbax needs an absolute path
            metadata = checkpointer.metadata(path).item_metadata
            on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree)
            return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=on_host))
    except (ImportError, MemoryError):
        raise
    except Exception as error:  # orbax/tensorstore raise many types for partial or damaged folders
        raise OriginalCheckpointError(f"checkpoint {path} is incomplete or corrupt (orbax: "
                                      f"{str(error).splitlines()[0] if str(error) else type(error).__name__})"
                                      ) from None
