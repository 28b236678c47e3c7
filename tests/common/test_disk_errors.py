"""Full and read-only disks (issue 12 item 7): every writer of a run, in both frameworks, raises one
DiskWriteError whose message names the file ("no space left on <path>", "<path> is read-only"), leaves no
temporary file and keeps the previous file intact.

Real small file systems (a tmpfs per test, tests/tmpfs.py): skipped where mounting is not permitted.
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from efficient_vdvae_common.atomic_files import atomic_binary_file, staged_folder, write_text_atomic
from efficient_vdvae_common.disk_errors import DiskWriteError, disk_error_message, disk_errno
from efficient_vdvae_common.images import write_png
from efficient_vdvae_common.tensorboard import TensorBoardWriter, close_writers
from tests.tmpfs import fill, leftovers, mounted_tmpfs, remount_read_only

NO_SPACE = "no space left on "
BIG = 64 * 1024  # more than a filled disk has left


# ---- Classification (no file system needed).

@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on {}"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left on {} (disk quota exceeded)"),
    (OSError(errno.EROFS, "Read-only file system"), "{} is read-only (read-only file system)"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied writing {}"),
    # tensorstore under orbax: the errno only in the text
    (ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\": Failed to write 144113 bytes to file 9: No space "
                "left on device [os_error_code='28']"), "no space left on {}"),
    (ValueError("FAILED_PRECONDITION: Error opening file: [os_error_code=30] Read-only file system"),
     "{} is read-only (read-only file system)"),
    (OSError(errno.ENOENT, "No such file or directory"), None),
    (ValueError("shapes (3,) and (4,) differ"), None),
])
def test_disk_errors_are_classified_by_errno_or_text(error, expected, tmp_path):
    target = tmp_path / "file"
    assert disk_error_message(error, target) == (None if expected is None else expected.format(target))


def test_an_errno_in_the_context_counts():
    """torch.save into a file object raises a RuntimeError without errno; the failed write is its context."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as error:
        assert disk_errno(error) == errno.ENOSPC


def test_our_own_errors_are_not_disk_errors(tmp_path):
    """A DataError about an unreadable image quotes "Permission denied": it is no write error."""
    from efficient_vdvae_common.data import DataError

    error = DataError(f"cannot read {tmp_path / 'a.png'}: [Errno 13] Permission denied")
    assert disk_errno(error) is None and disk_error_message(error, tmp_path) is None


# ---- The writers on a real full or read-only disk.

@pytest.fixture
def disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", size="512k") as where:
        yield where


def _torch_state(step: int, size: int = 2 * BIG // 4) -> dict:
    import torch

    return {"global_step": step, "w": torch.randn(size, generator=torch.Generator().manual_seed(step))}


def _write_atomic_binary(path: Path, step: int, size: int) -> None:
    with atomic_binary_file(path) as stream:
        stream.write(step.to_bytes(4, "little") + os.urandom(size))


def _read_atomic_binary(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:4], "little")


def _write_text(path: Path, step: int, size: int) -> None:
    write_text_atomic(path, f"{step}\n" + "x" * size)


def _read_text(path: Path) -> int:
    return int(path.read_text().splitlines()[0])


def _write_torch_checkpoint(path: Path, step: int, size: int) -> None:
    from efficient_vdvae_torch.checkpoints import save_checkpoint

    save_checkpoint(_torch_state(step, max(size // 4, 1)), path, max_allowed_checkpoints=1)


def _read_torch_checkpoint(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["global_step"])


# (write(path, step, bytes), read(path) -> step, what the message names)
ATOMIC_WRITERS: dict[str, tuple[Callable, Callable]] = {
    "atomic_binary_file": (_write_atomic_binary, _read_atomic_binary),
    "write_text_atomic": (_write_text, _read_text),
    "torch_checkpoint": (_write_torch_checkpoint, _read_torch_checkpoint),
}


# fault -> (how to cause it, the size of the second write, the message's start for a target)
DISK_FAULTS: dict[str, tuple[Callable, int, Callable]] = {
    "full": (fill, BIG, lambda target: NO_SPACE + str(target)),
    "read-only": (remount_read_only, 1000, lambda target: f"{target} is read-only"),
}


@pytest.mark.parametrize("fault", sorted(DISK_FAULTS))
@pytest.mark.parametrize("writer", sorted(ATOMIC_WRITERS))
def test_atomic_writer_on_a_faulty_disk(writer, fault, disk):
    write, read = ATOMIC_WRITERS[writer]
    cause, size, expected_start = DISK_FAULTS[fault]
    target = disk / "run" / "file"
    write(target, 1, 1000)
    cause(disk)
    with pytest.raises(DiskWriteError) as raised:
        write(target, 2, size)
    message = str(raised.value)
    assert message.startswith(expected_start(target)), message
    assert "\n" not in message and ".tmp" not in message
    if fault == "read-only":
        with pytest.raises(DiskWriteError, match="is read-only"):  # a new folder too
            write(disk / "new" / "file", 1, 10)
    assert leftovers(disk) == []
    assert read(target) == 1


def test_torch_checkpoint_with_history_on_a_full_disk(disk):
    """With run.max_allowed_checkpoints > 1: the checkpoint and its history entries stay as they were."""
    from efficient_vdvae_torch.checkpoints import history_dir, save_checkpoint

    target = disk / "checkpoints-run"
    save_checkpoint(_torch_state(1, 1000), target, max_allowed_checkpoints=3)
    fill(disk)
    with pytest.raises(DiskWriteError, match=f"^{NO_SPACE}{target} \\(the previous checkpoint is unchanged\\)$"):
        save_checkpoint(_torch_state(2), target, max_allowed_checkpoints=3)
    assert sorted(p.name for p in history_dir(target).iterdir()) == ["global_step-1"]
    assert _read_torch_checkpoint(target) == 1 and leftovers(disk) == []


def test_staged_folder_on_a_full_disk_names_the_final_path(disk):
    """Synthesis images (write_png into the staging folder; PIL's error names no file): the message names
    the destination folder, the staging folder is gone, the destination keeps only what it had."""
    destination = disk / "logs-run"
    write_png(destination / "synthesis-images" / "old.png", np.zeros((4, 4, 3), np.uint8))
    fill(disk)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)  # ~49 KB of PNG
    with pytest.raises(DiskWriteError) as raised:
        with staged_folder(destination) as staging:
            write_png(staging / "synthesis-images" / "new.png", noise)
    assert str(raised.value) == NO_SPACE + str(destination)
    assert leftovers(disk) == []
    assert sorted(p.name for p in (destination / "synthesis-images").iterdir()) == ["old.png"]


def test_staged_folder_inner_atomic_file_names_the_final_path(disk):
    destination = disk / "logs-run"
    destination.mkdir()
    fill(disk)
    with pytest.raises(DiskWriteError) as raised:
        with staged_folder(destination) as staging:
            _write_atomic_binary(staging / "latents" / "div_stats.npy", 1, BIG)
    assert str(raised.value) == NO_SPACE + str(destination / "latents" / "div_stats.npy")
    assert leftovers(disk) == [] and list(destination.iterdir()) == []


def test_staged_folder_on_a_read_only_disk(disk):
    (disk / "logs-run").mkdir()
    remount_read_only(disk)
    with pytest.raises(DiskWriteError) as raised:
        with staged_folder(disk / "logs-run"):
            pass
    assert str(raised.value) == f"{disk / 'logs-run'} is read-only (read-only file system)"


def test_a_refused_read_inside_a_staged_folder_is_not_a_disk_error(disk, tmp_path):
    """Only errors of files under the staging (or destination) folder are the disk's: another file's
    error passes unchanged."""
    elsewhere = tmp_path / "input.png"
    with pytest.raises(PermissionError):
        with staged_folder(disk / "logs-run"):
            raise PermissionError(errno.EACCES, "Permission denied", str(elsewhere))
    assert leftovers(disk) == []


def test_a_data_error_inside_a_staged_folder_passes_unchanged(disk):
    from efficient_vdvae_common.data import DataError

    with pytest.raises(DataError):
        with staged_folder(disk / "logs-run"):
            raise DataError("cannot read x.png: [Errno 13] Permission denied")


def test_the_saved_config_on_a_read_only_disk_is_one_line(disk, monkeypatch, capsys):
    """The first run of a name saves its config (load_config_or_exit): a read-only disk exits 2 naming it."""
    from hparams.cli import load_config_or_exit, parse_args
    from tests.conftest import REFERENCE_CONFIG

    remount_read_only(disk)
    monkeypatch.chdir(disk)
    args = parse_args("", ["--config", str(REFERENCE_CONFIG), "--set", "run.name=ro"])
    with pytest.raises(SystemExit) as exited:
        load_config_or_exit(args, save=True)
    assert exited.value.code == 2
    assert capsys.readouterr().err == (f"error: {disk / 'logs-ro' / 'hparams-ro.cfg'} is read-only "
                                       "(read-only file system)\n")


def test_tensorboard_writer_on_a_full_disk(disk):
    logs = disk / "logs-run" / "train"
    writer = TensorBoardWriter(logs)
    writer.add_scalar("a", 1.0, 1)
    writer.flush()
    fill(disk)
    with pytest.raises(DiskWriteError) as raised:
        for step in range(200):  # more than the buffer holds
            writer.add_histogram("h", np.random.default_rng(step).normal(size=1000), step)
        writer.flush()
    assert str(raised.value) == NO_SPACE + str(writer.path)
    writer.close()  # quiet after a failure: the buffered events cannot be written either
    with pytest.raises(DiskWriteError) as raised:  # a new writer: no empty event file left behind
        TensorBoardWriter(disk / "logs-run" / "val")
    assert str(raised.value).startswith(NO_SPACE + str(disk / "logs-run" / "val" / "events.out.tfevents."))
    assert list((disk / "logs-run" / "val").iterdir()) == []


def test_tensorboard_writer_on_a_read_only_disk(disk):
    (disk / "logs-run").mkdir()
    remount_read_only(disk)
    with pytest.raises(DiskWriteError) as raised:
        TensorBoardWriter(disk / "logs-run" / "train")
    assert str(raised.value) == f"{disk / 'logs-run' / 'train'} is read-only (read-only file system)"


def _nearly_full_page_then_fill(writer: TensorBoardWriter, disk: Path) -> None:
    """Events flushed until the file's last page is nearly used, the disk filled, then a few more events
    (under the file buffer's size, more than the page has left): they fail only when written at close."""
    step = 0
    while writer.path.stat().st_size % 4096 < 3700:
        writer.add_scalar("loss", 1.0, step)
        writer.flush()
        step += 1
    fill(disk)
    for step in range(step, step + 20):  # about 45 bytes each
        writer.add_scalar("loss", 1.0, step)


def test_close_writers_keeps_the_run_error(disk):
    """A writer that cannot flush at close does not replace the error a failing run is raising."""
    writer = TensorBoardWriter(disk / "logs")
    _nearly_full_page_then_fill(writer, disk)
    with pytest.raises(ValueError, match="the run's error"):
        try:
            raise ValueError("the run's error")
        finally:
            close_writers([writer])
    assert writer._file.closed and writer._failed  # the close did fail


def test_close_writers_raises_when_nothing_else_failed(disk):
    writer = TensorBoardWriter(disk / "logs")
    _nearly_full_page_then_fill(writer, disk)
    with pytest.raises(DiskWriteError, match=NO_SPACE):
        close_writers([writer])


# ---- JAX checkpoints (orbax): its temporary folder removed, its logged traceback kept off the one line.

def _jax_state(step: int, size: int):
    import jax

    return {"w": jax.random.normal(jax.random.PRNGKey(step), (size,))}


def test_jax_checkpoint_on_a_full_disk(disk, caplog):
    from efficient_vdvae_common.training_progress import TrainingProgress
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints

    directory = disk / "checkpoints-run"
    checkpoints = TrainingCheckpoints(directory, max_to_keep=3)
    try:
        checkpoints.save(_jax_state(1, 100), TrainingProgress(global_step=1))
        fill(disk, leave=16 * 1024)  # room for orbax's small files, not for the arrays
        with caplog.at_level(logging.INFO):
            with pytest.raises(DiskWriteError) as raised:
                checkpoints.save(_jax_state(2, 100_000), TrainingProgress(global_step=2))
        assert str(raised.value) == NO_SPACE + f"{directory} (the earlier checkpoints are unchanged)"
        assert not [record for record in caplog.records if "No space left" in record.getMessage()]
        # The save's other writes ended before it raised: none reports later, none writes into the
        # removed temporary folder.
        gc.collect()
        time.sleep(0.5)
        assert not [record for record in caplog.records if record.name == "asyncio"]
        assert leftovers(disk) == []
        assert checkpoints.latest() == 1
    finally:
        checkpoints.close()


_CLOSED_LOOP_REPORTS = """
import asyncio, errno, gc
from efficient_vdvae_common.disk_errors import quiet_disk_error_logs

class Write:  # an object whose finaliser raises: Python reports it as unraisable, as tensorstore does
    def __init__(self, loop):
        self.loop = loop
    def __del__(self):
        self.loop.call_soon_threadsafe(print)

class Other:
    def __del__(self):
        raise RuntimeError("another unraisable error")

def orphaned_task(error):  # a write the failed save left behind: its exception never retrieved
    async def write():
        raise error
    loop = asyncio.new_event_loop()
    task = loop.create_task(write())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task
    gc.collect()

closed = asyncio.new_event_loop()
closed.close()
with quiet_disk_error_logs("absl"):
    pass
Write(closed)  # after a save that succeeded: reported
orphaned_task(FileNotFoundError(errno.ENOENT, "orphan before"))  # reported
try:
    with quiet_disk_error_logs("absl"):
        raise OSError(errno.ENOSPC, "No space left on device")
except OSError:
    pass
Write(closed)  # after a failed save, while the writes in flight finish: dropped
orphaned_task(FileNotFoundError(errno.ENOENT, "orphan after"))  # dropped
Other()  # anything else: reported
orphaned_task(ValueError("a task's own bug"))  # reported
"""


def test_writes_refused_by_a_closed_event_loop_after_a_failed_save_print_nothing():
    """tensorstore reports each write still in flight when orbax's event loop closed on the error as an
    unraisable "Event loop is closed" traceback, and asyncio the writes that failed after the save as
    tasks whose exception was never retrieved; after a failed save those reports are dropped, others not."""
    result = subprocess.run([sys.executable, "-c", _CLOSED_LOOP_REPORTS], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeError: Event loop is closed") == 1, result.stderr
    assert result.stderr.count("another unraisable error") == 1, result.stderr
    assert "orphan before" in result.stderr and "orphan after" not in result.stderr, result.stderr
    assert "a task's own bug" in result.stderr, result.stderr


def test_jax_checkpoint_on_a_read_only_disk(disk):
    from efficient_vdvae_common.training_progress import TrainingProgress
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints

    directory = disk / "checkpoints-run"
    checkpoints = TrainingCheckpoints(directory, max_to_keep=3)
    try:
        checkpoints.save(_jax_state(1, 100), TrainingProgress(global_step=1))
        remount_read_only(disk)
        with pytest.raises(DiskWriteError) as raised:
            checkpoints.save(_jax_state(2, 100), TrainingProgress(global_step=2))
        assert str(raised.value).startswith(f"{directory} is read-only"), str(raised.value)
        assert checkpoints.latest() == 1
    finally:
        checkpoints.close()
