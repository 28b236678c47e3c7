"""Full and read-only disks: one line naming the file, instead of a library's traceback.

Every writer of a run (checkpoints of both frameworks, saved configs,
TensorBoard event files, synthesis outputs) runs its file operations inside
`disk_errors(path)`, which turns an error caused by a full disk, an exceeded
quota, a read-only file system or missing write permission into a
DiskWriteError whose message names `path`:

    no space left on /runs/checkpoints-cifar (the previous checkpoint is unchanged)
    /runs/logs-cifar/hparams-cifar.cfg is read-only
    permission denied writing /runs/logs-cifar/train/events.out.tfevents...

The entry scripts print it as one `error:` line and exit 2. Libraries report
these conditions in different ways: Python raises OSError with an errno;
torch.save raises a RuntimeError without one (the OSError of the failed write
is its context); tensorstore, under orbax, raises ValueError whose text
carries `[os_error_code='28']`. `disk_errno` reads all three.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
READ_ONLY = frozenset({errno.EROFS})
DENIED = frozenset({errno.EACCES, errno.EPERM})
DISK_ERRNOS = NO_SPACE | READ_ONLY | DENIED

# "[Errno 28]" (Python's OSError text), "os_error_code='28'" / "os_error_code=28" (tensorstore, absl status).
_CODE_IN_TEXT = re.compile(r"\[Errno (\d+)\]|os_error_code='?(\d+)")
_TEXTS = {os.strerror(code): code for code in DISK_ERRNOS}
_CHAIN_LIMIT = 16
_OUR_PACKAGES = frozenset({"efficient_vdvae_common", "efficient_vdvae_torch", "efficient_vdvae_jax", "hparams"})


class DiskWriteError(Exception):
    """A file of the run could not be written: its disk is full or read-only, or writing is not permitted.

    `path` is the file (or folder) named in the message; `code` the errno.
    """

    def __init__(self, message: str, path: str | Path, code: int):
        super().__init__(message)
        self.path = Path(path)
        self.code = code


def disk_errno(error: BaseException) -> int | None:
    """The errno of a full or read-only disk or a refused write behind `error` (its causes and contexts
    included), None when it is none of these. The project's own errors are never read as one: a DataError
    quoting "Permission denied" for an image is about reading it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _CHAIN_LIMIT:
        seen.add(id(current))
        if isinstance(current, DiskWriteError):
            return current.code
        if type(current).__module__.split(".")[0] in _OUR_PACKAGES:
            return None  # our own errors (DataError, CheckpointError, ...) already say what failed
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current.errno
        code = _code_in_text(str(current))
        if code is not None:
            return code
        current = current.__cause__ or current.__context__
    return None


def _code_in_text(text: str) -> int | None:
    for match in _CODE_IN_TEXT.finditer(text):
        code = int(match.group(1) or match.group(2))
        if code in DISK_ERRNOS:
            return code
    for phrase, code in _TEXTS.items():
        if phrase in text:
            return code
    return None


def disk_error_message(error: BaseException, path: str | Path) -> str | None:
    """The one-line message for `error` when it comes from a full or read-only disk or a refused write
    of `path`, None otherwise (the caller re-raises it unchanged)."""
    code = disk_errno(error)
    where = os.path.abspath(path)
    if code in NO_SPACE:
        return f"no space left on {where}" + (" (disk quota exceeded)" if code == errno.EDQUOT else "")
    if code in READ_ONLY:
        return f"{where} is read-only (read-only file system)"
    if code in DENIED:
        return f"permission denied writing {where}"
    return None


def as_disk_write_error(error: BaseException, path: str | Path, note: str = "") -> DiskWriteError | None:
    """`error` as a DiskWriteError naming `path` (with `note` appended), None when it is no disk error.
    A DiskWriteError comes back as it is: the innermost writer named the most precise path."""
    if isinstance(error, DiskWriteError):
        return error
    message = disk_error_message(error, path)
    if message is None:
        return None
    return DiskWriteError(message + note, path, disk_errno(error) or 0)


@contextmanager
def disk_errors(path: str | Path, note: str = "") -> Iterator[None]:
    """Raise the block's disk errors as a DiskWriteError naming `path` (`note` appended: what was kept);
    any other error passes unchanged."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as error:
        converted = as_disk_write_error(error, path, note)
        if converted is None:
            raise
        raise converted from None


class _DropDiskErrorRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _code_in_text(record.getMessage()) is not None:
            return False
        return not (record.exc_info and record.exc_info[1] is not None and disk_errno(record.exc_info[1]))


# A write that fails under orbax ends the event loop its tensorstore writes report to; the writes
# still in flight then report to the closed loop, and tensorstore prints each refusal as an
# unraisable "Event loop is closed" traceback (PyErr_WriteUnraisable), during or after the save.
_CLOSED_LOOP = "Event loop is closed"


def _drop_closed_loop_reports(previous_hook):
    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == _CLOSED_LOOP:
            return
        previous_hook(unraisable)

    return hook


# A failed orbax save returns while the other writes of its `asyncio.gather` still run; when one of them
# fails in turn, asyncio logs "Task exception was never retrieved" from the task's finaliser, at whatever
# moment the garbage collector runs it. Formatting that traceback inside another parse can crash
# CPython 3.11 < 3.11.8 ("SystemError: AST constructor recursion depth mismatch"), so these reports are
# dropped before any handler formats them.
_ORPHANED_TASK_MESSAGES = ("Task exception was never retrieved", "Task was destroyed but it is pending!")


class _DropOrphanedWriteReports(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(_ORPHANED_TASK_MESSAGES):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return error is not None and not isinstance(error, OSError) and disk_errno(error) is None


@contextmanager
def quiet_disk_error_logs(logger_name: str) -> Iterator[None]:
    """Keep a failed background write to one line: drop the records of logger `logger_name` that report a
    disk error during the block (orbax, through absl, logs the traceback before raising it), the reports
    of writes refused by a closed event loop, and asyncio's reports of the failed save's other writes,
    which end after it. When the block raises, the latter two stay dropped for the rest of the process,
    which is ending with that error while the writes in flight finish."""
    logger = logging.getLogger(logger_name)
    record_filter = _DropDiskErrorRecords()
    logger.addFilter(record_filter)
    orphan_filter = _DropOrphanedWriteReports()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addFilter(orphan_filter)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_reports(previous_hook)
    try:
        yield
    finally:
        logger.removeFilter(record_filter)
    asyncio_logger.removeFilter(orphan_filter)  # both reached only when the block succeeded
    sys.unraisablehook = previous_hook
