"""A TensorBoard event writer for numpy values, shared by both trainers.

Built on the `tensorboard` package's event protos and record framing, so it
needs neither TensorFlow nor torch: scalars, histograms and images (uint8,
channels-last) become the same summaries `tensorboard --logdir` shows.
(tensorboard's own EventFileWriter is not used: it imports TensorFlow when
TensorFlow is installed, which costs seconds and floods the log.)
"""
from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, histogram_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from efficient_vdvae_common.disk_errors import DiskWriteError, disk_errors
from efficient_vdvae_common.images import encode_png


def histogram_proto(values: np.ndarray, bins: int = 30) -> histogram_pb2.HistogramProto | None:
    """A HistogramProto of the finite entries of `values` (None when there are none).

    Non-finite entries are dropped: one NaN weight must not stop the logging of
    the step that shows it.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    counts, edges = np.histogram(values, bins=bins)
    # TensorBoard buckets are described by their right edges.
    return histogram_pb2.HistogramProto(
        min=float(values.min()), max=float(values.max()), num=float(values.size),
        sum=float(values.sum()), sum_squares=float(np.dot(values, values)),
        bucket_limit=edges[1:].tolist(), bucket=counts.astype(np.float64).tolist())


_writer_ids = itertools.count()


def close_writers(writers: Iterable["TensorBoardWriter"]) -> None:
    """Close every writer. The first error is raised after all are closed, unless an exception is already
    on its way (a `finally` block of a failing run): that one is the run's message, not this."""
    first = None
    for writer in writers:
        try:
            writer.close()
        except Exception as error:  # noqa: PERF203 (a handful of writers)
            first = first or error
    if first is not None and sys.exc_info()[1] is None:
        raise first


class TensorBoardWriter:
    """Writes summaries of one run mode (e.g. logs-<name>/train) to a new event file.

    Events are written synchronously; `flush` pushes them to the OS, so a
    reader (or a crash) sees everything logged before the last flush. A full
    or read-only disk raises DiskWriteError naming the event file.
    """

    _failed = False

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        # The name pattern TensorBoard looks for; the counter keeps two writers of one process apart.
        self.path = self.logdir / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                                   f".{os.getpid()}.{next(_writer_ids)}")
        with disk_errors(self.logdir):
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")
        self._records = RecordWriter(self._file)
        try:
            self._add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
            self.flush()
        except DiskWriteError:
            self.close()
            self.path.unlink(missing_ok=True)  # no empty event file left behind
            raise

    def _add_event(self, event: event_pb2.Event) -> None:
        with self._disk_errors():
            self._records.write(event.SerializeToString())

    @contextmanager
    def _disk_errors(self) -> Iterator[None]:
        """A full or read-only disk as DiskWriteError naming the event file; a later `close` then stays
        quiet (the buffered events cannot be written either)."""
        try:
            with disk_errors(self.path):
                yield
        except BaseException:
            self._failed = True
            raise

    def _write(self, value: summary_pb2.Summary.Value, step: int) -> None:
        event = event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=[value]))
        self._add_event(event)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step)

    def add_scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """One scalar per entry, tagged `prefix + key`."""
        for key, value in values.items():
            self.add_scalar(prefix + key, value, step)

    def add_histogram(self, tag: str, values: np.ndarray, step: int, bins: int = 30) -> None:
        histogram = histogram_proto(values, bins)
        if histogram is not None:
            self._write(summary_pb2.Summary.Value(tag=tag, histo=histogram), step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 image (H, W), (H, W, 1) or (H, W, 3)."""
        image = np.asarray(image)
        height, width = image.shape[:2]
        channels = 1 if image.ndim == 2 else image.shape[2]
        encoded = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                            encoded_image_string=encode_png(image))
        self._write(summary_pb2.Summary.Value(tag=tag, image=encoded), step)

    def flush(self) -> None:
        with self._disk_errors():
            self._file.flush()

    def close(self) -> None:
        """Close the file; after a failed write the buffered events are dropped without a second error."""
        if self._file.closed:
            return
        if self._failed:
            try:
                self._file.close()
            except OSError:
                pass
            return
        with self._disk_errors():
            self._file.close()

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
