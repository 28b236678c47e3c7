"""Small real file systems for the full-disk and read-only tests: a tmpfs mounted for one test.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test is skipped, saying why. The
decision is made by trying, since CI may run as root on the same kind of machine.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

BLOCK = 4096  # tmpfs allocates whole pages


def _mount_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextmanager
def mounted_tmpfs(where: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (created) for the block, unmounted after it; skips the test
    when mounting is not permitted here."""
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command: cannot make a small real file system")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        result = _mount_command("-t", "tmpfs", "-o", options, "tmpfs", str(where))
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here ({error})")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root? {result.stderr.strip()[:200]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def remount_read_only(where: Path) -> None:
    result = _mount_command("-o", "remount,ro", str(where))
    assert result.returncode == 0, result.stderr


def free_bytes(where: Path) -> int:
    stats = os.statvfs(where)
    return stats.f_bavail * stats.f_frsize


def fill(where: Path, leave: int = 0) -> Path:
    """Fill the file system of `where` with one file so that about `leave` bytes stay free."""
    filler = where / "filler"
    size = max(0, (free_bytes(where) - leave) // BLOCK * BLOCK)
    chunk = b"\0" * BLOCK
    try:
        with open(filler, "ab") as stream:
            for _ in range(size // BLOCK):
                stream.write(chunk)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    return filler


def leftovers(where: Path) -> list[str]:
    """Temporary files and folders of our writers and of orbax anywhere under `where`."""
    markers = (".tmp", ".staging-", ".orbax-checkpoint-tmp", ".partial")
    return sorted(str(path.relative_to(where)) for path in where.rglob("*")
                  if any(marker in path.name for marker in markers))
