"""Files that appear complete or not at all: written to a temporary file in
the same folder, flushed to disk, then renamed over the target (the one
atomic writer of the project: checkpoints, saved configs, images, encodings);
and groups of files (a synthesis run's images) that appear together or not at all.

A full or read-only disk raises DiskWriteError naming the target (never the
temporary name), and the temporary file or folder is removed first. Only a
killed process leaves a temporary file behind (`.<name>.XXXXXXXX.tmp`, see
`temporary_files`).
"""
from __future__ import annotations

import functools
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from efficient_vdvae_common.disk_errors import DiskWriteError, as_disk_write_error, disk_errors


_TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_binary_file(path: str | Path, note: str = "",
                       before_replace: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """`with atomic_binary_file(p) as stream: ...` replaces `p` only if the block succeeds.

    `note` ends a DiskWriteError's message (what was kept); `before_replace` runs once the new
    bytes are on disk, just before the rename (e.g. to move a folder at `p` aside). The rename
    itself is made durable too (the folder is synced).
    """
    path = Path(path)
    with disk_errors(path, note):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX)
        try:
            os.fchmod(handle, _new_file_mode())  # mkstemp's 0600 would hide the file from the user's group
            with os.fdopen(handle, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    _fsync_folder(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a UTF-8 file so that readers see either nothing or all of it; a full or read-only disk
    raises DiskWriteError naming `path`, leaving no temporary file."""
    with atomic_binary_file(path) as stream:
        stream.write(text.encode("utf-8"))


def temporary_files(path: str | Path) -> list[Path]:
    """The temporary files a process killed while writing `path` left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{_TEMPORARY_SUFFIX}"))


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the process's umask (read once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the file itself is on disk
        pass
    finally:
        os.close(fd)


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
