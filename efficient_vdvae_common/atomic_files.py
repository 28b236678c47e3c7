"""Files that appear complete or not at all: written to a temporary file in
the same folder, flushed to disk, then renamed over the target; and groups of
files (a synthesis run's images) that appear together or not at all.

A full or read-only disk raises DiskWriteError naming the target (never the
temporary name), and the temporary file or folder is removed first.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from efficient_vdvae_common.disk_errors import DiskWriteError, as_disk_write_error, disk_errors


@contextmanager
def atomic_binary_file(path: str | Path) -> Iterator[BinaryIO]:
    """`with atomic_binary_file(p) as stream: ...` replaces `p` only if the block succeeds."""
    path = Path(path)
    with disk_errors(path):
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
    A full or read-only disk raises DiskWriteError naming the file's final
    place under `d` (or `d`), after `s` is deleted.
    """
    destination = Path(destination)
    with disk_errors(destination):
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=destination, prefix=".staging-"))
    try:
        yield staging
        _move_tree(staging, destination)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        converted = _staged_disk_error(error, staging, destination)
        if converted is None:
            raise
        raise converted from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staged_disk_error(error: Exception, staging: Path, destination: Path) -> DiskWriteError | None:
    """A disk error of the block or of the moves, naming the final path (under `destination`) of the file
    that failed; an error that names a file outside both folders (a refused read) is not one."""
    staged, final = os.path.abspath(staging), os.path.abspath(destination)
    if isinstance(error, DiskWriteError):
        return DiskWriteError(str(error).replace(staged, final), str(error.path).replace(staged, final), error.code)
    filename = getattr(error, "filename", None)
    if isinstance(filename, (str, Path)):
        filename = os.path.abspath(filename)
        if not (filename.startswith(staged) or filename.startswith(final)):
            return None
        return as_disk_write_error(error, filename.replace(staged, final))
    return as_disk_write_error(error, destination)


def _move_tree(source: Path, destination: Path) -> None:
    for entry in sorted(source.iterdir()):
        target = destination / entry.name
        if entry.is_dir() and target.is_dir():
            _move_tree(entry, target)
        else:
            os.replace(entry, target)
