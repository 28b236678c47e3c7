"""Files that appear complete or not at all: written to a temporary file in
the same folder, flushed to disk, then renamed over the target; and groups of
files (a synthesis run's images) that appear together or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_binary_file(path: str | Path) -> Iterator[BinaryIO]:
    """`with atomic_binary_file(p) as stream: ...` replaces `p` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def staged_folder(destination: str | Path) -> Iterator[Path]:
    """`with staged_folder(d) as s: ...`: what the block writes under `s` appears under `d` only if it succeeds.

    `s` is a hidden temporary folder inside `d` (same file system: moves are
    renames). On success its tree is moved into `d`: a folder `d` lacks is
    renamed in whole, an existing one is merged file by file (same names
    replaced, other files kept). On an error `s` is deleted, so `d` gains no
    new file. Only a kill during the block can leave `s` behind (`.staging-*`).
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination, prefix=".staging-"))
    try:
        yield staging
        _move_tree(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_tree(source: Path, destination: Path) -> None:
    for entry in sorted(source.iterdir()):
        target = destination / entry.name
        if entry.is_dir() and target.is_dir():
            _move_tree(entry, target)
        else:
            os.replace(entry, target)
