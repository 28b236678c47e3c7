"""Refusing to run inference on a broken model (SPEC.md section 8), shared by both frameworks.

A diverged run can leave a checkpoint whose weights are NaN or infinite;
synthesis on it would write black images and a div_stats file its own loader
rejects. Both frameworks check the loaded weights before any mode runs, and
every batch's outputs before they are written, and raise `BrokenModelError`
naming the checkpoint: the entry scripts print it as one line and exit 2,
with nothing written (reconstruction and generation stage their images and
move them into place only at the end: atomic_files.staged_folder).
"""
from __future__ import annotations

from typing import Iterable


class BrokenModelError(ValueError):
    """Non-finite weights or outputs; the message names the checkpoint."""


def check_finite_weights(counts: Iterable[tuple[str, int, int]], checkpoint: str, which: str) -> None:
    """Raise unless every weight is finite.

    counts: (parameter name, non-finite entries, entries) per parameter;
    `which` says which weights were loaded ('EMA' or 'trained').
    """
    counts = list(counts)
    broken = [(name, bad) for name, bad, _ in counts if bad]
    if broken:
        total = sum(size for _, _, size in counts)
        bad = sum(bad for _, bad in broken)
        raise BrokenModelError(
            f"checkpoint {checkpoint} is broken: its {which} weights hold {bad} non-finite values of {total} "
            f"({len(broken)} of {len(counts)} parameters, first {broken[0][0]}); the run diverged: "
            "use an earlier checkpoint or retrain")


def check_finite_outputs(all_finite: bool, what: str, checkpoint: str) -> None:
    """Raise when a batch's outputs (`what`: e.g. 'reconstruction of img_000.png, ...') are not finite."""
    if not all_finite:
        raise BrokenModelError(f"checkpoint {checkpoint} gives non-finite values in {what} although its "
                               "weights are finite (numerical overflow); stopped before writing them")


def describe_images(names: list[str], limit: int = 3) -> str:
    """'a.png, b.png, c.png and 5 more': a short list for messages."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
