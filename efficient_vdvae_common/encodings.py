"""The encodings file written by synthesis mode `encoding` (SPEC.md section 8).

One uncompressed `.npz` file, read with `allow_pickle=False`, so loading it
never runs code (the original wrote a pickle). Its arrays:

- `format_version`: int64 scalar, currently 1.
- `file_names`: (N,) unicode strings, the images' names in the data set
  (paths relative to the image folder, or `<file>_<row>` for array files).
- `groups`: (G,) int64, ascending: the latent groups (top-down execution
  order, 0 = lowest resolution) with at least one active variate.
- `group_<g>_variates`: (n_active,) int64, ascending: which variates of group
  g are active (their div_stats lie above the quantile threshold).
- `group_<g>_posterior`: (N, H, W, n_active, 2) float32, per image the
  posterior mean (`[..., 0]`) and standard deviation (`[..., 1]`) of those
  variates at the group's resolution H x W. The standard deviation is stored
  in both distribution bases ('logstd' models are converted).

Row i of every posterior array belongs to `file_names[i]`. The whole file is
held in memory while it is written and read: N * sum_g(H_g * W_g * n_active_g)
* 8 bytes, a few GB for a full ImageNet train set at the default 3% quantile.

    encodings = read_encodings("logs-run/latents/encodings.npz")
    posterior = encodings.groups[5].posterior            # (N, H, W, n_active, 2)
    mean, std = posterior[..., 0], posterior[..., 1]
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from efficient_vdvae_common.atomic_files import atomic_binary_file

FORMAT_VERSION = 1
ENCODINGS_FILENAME = "encodings.npz"


class EncodingsError(ValueError):
    """An encodings file or content that breaks the layout; the message says where."""


@dataclass
class GroupEncoding:
    variates: np.ndarray  # (n_active,) int64
    posterior: np.ndarray  # (N, H, W, n_active, 2) float32: mean, std


@dataclass
class Encodings:
    file_names: list[str]
    groups: dict[int, GroupEncoding]

    def __post_init__(self) -> None:
        _check_layout(self)

    def for_image(self, name: str) -> dict[int, np.ndarray]:
        """Group index -> (H, W, n_active, 2) posterior of one image."""
        try:
            row = self.file_names.index(name)
        except ValueError:
            raise KeyError(f"no encoding for image {name!r}") from None
        return {g: group.posterior[row] for g, group in self.groups.items()}


def _check_layout(encodings: Encodings) -> None:
    count = len(encodings.file_names)
    if len(set(encodings.file_names)) != count:
        raise EncodingsError("file_names are not unique")
    for g, group in encodings.groups.items():
        variates, posterior = np.asarray(group.variates), np.asarray(group.posterior)
        if variates.ndim != 1 or variates.size == 0 or np.any(np.diff(variates) <= 0):
            raise EncodingsError(f"group {g}: variates must be a non-empty ascending 1-D array, got {variates}")
        expected = f"({count}, H, W, {variates.size}, 2)"
        if posterior.ndim != 5 or posterior.shape[0] != count or posterior.shape[3:] != (variates.size, 2):
            raise EncodingsError(f"group {g}: posterior of shape {posterior.shape}, expected {expected}")


class EncodingsBuilder:
    """Collects batches of per-group posteriors and assembles one `Encodings`."""

    def __init__(self, active_variates: Mapping[int, np.ndarray]):
        """`active_variates`: group index -> indices of its active variates (groups with none left out)."""
        self._variates = {int(g): np.asarray(v, dtype=np.int64) for g, v in sorted(active_variates.items())}
        self._names: list[str] = []
        self._batches: dict[int, list[np.ndarray]] = {g: [] for g in self._variates}

    def add_batch(self, names: Sequence[str], posteriors: Mapping[int, np.ndarray]) -> None:
        """`posteriors`: group -> (B, H, W, n_active, 2) for the B images `names`."""
        if set(posteriors) != set(self._variates):
            raise EncodingsError(f"batch holds groups {sorted(posteriors)}, expected {sorted(self._variates)}")
        for g, posterior in posteriors.items():
            if len(posterior) != len(names):
                raise EncodingsError(f"group {g}: {len(posterior)} posteriors for {len(names)} names")
            self._batches[g].append(np.asarray(posterior, dtype=np.float32))
        self._names.extend(names)

    def build(self) -> Encodings:
        if not self._names:
            raise EncodingsError("no images were encoded")
        return Encodings(list(self._names), {
            g: GroupEncoding(self._variates[g], np.concatenate(self._batches[g])) for g in self._variates
        })


def write_encodings(path: str | Path, encodings: Encodings) -> None:
    """Write `encodings` to `path` atomically (readers see the old file or the complete new one)."""
    _check_layout(encodings)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "file_names": np.asarray(encodings.file_names, dtype=np.str_),
        "groups": np.asarray(sorted(encodings.groups), dtype=np.int64),
    }
    for g, group in encodings.groups.items():
        arrays[f"group_{g}_variates"] = np.asarray(group.variates, dtype=np.int64)
        arrays[f"group_{g}_posterior"] = np.asarray(group.posterior, dtype=np.float32)
    with atomic_binary_file(path) as stream:
        np.savez(stream, allow_pickle=False, **arrays)


def read_encodings(path: str | Path) -> Encodings:
    """Load an encodings file without executing code; EncodingsError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise EncodingsError(f"no encodings file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise EncodingsError(f"cannot read encodings file {path}: {error}") from None
    try:
        version = int(arrays["format_version"])
        if version != FORMAT_VERSION:
            raise EncodingsError(f"format_version {version}, this code reads {FORMAT_VERSION}")
        groups = {
            int(g): GroupEncoding(arrays[f"group_{g}_variates"], arrays[f"group_{g}_posterior"])
            for g in arrays["groups"]
        }
        return Encodings([str(name) for name in arrays["file_names"]], groups)
    except KeyError as error:
        raise EncodingsError(f"encodings file {path} lacks the array {error}") from None
    except EncodingsError as error:
        raise EncodingsError(f"encodings file {path}: {error}") from None
