"""One reader per on-disk format; each gives uint8 (H, W, C) images by index.

A reader only knows its files: it opens images lazily so that big datasets
never have to fit in memory. Splits, preprocessing and batching live
elsewhere (splits.py, preprocessing.py, the frameworks' loaders).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from efficient_vdvae_common.atomic_files import atomic_binary_file
from efficient_vdvae_common.data.decoding import open_8bit
from efficient_vdvae_common.data.errors import CorruptImageError, DataError, NotAFolderError
from efficient_vdvae_common.data.preprocessing import resize_image

__all__ = ["ArrayReader", "CorruptImageError", "DataError", "ImageFolderReader", "NotAFolderError", "NpzReader",
           "existing_folder", "list_image_files"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageReader(Protocol):
    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray: ...

    def name(self, index: int) -> str: ...


class ArrayReader:
    """Images already in memory, (N, H, W, C) uint8 (official CIFAR-10 / MNIST arrays)."""

    def __init__(self, images: np.ndarray, name_prefix: str):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(f"expected (N, H, W, C) uint8 images for {name_prefix}, got {images.shape} {images.dtype}")
        self._images = images
        self._prefix = name_prefix

    def __len__(self) -> int:
        return len(self._images)

    def read(self, index: int) -> np.ndarray:
        return self._images[index]

    def name(self, index: int) -> str:
        return f"{self._prefix}_{index:06d}"


def existing_folder(folder: str | os.PathLike, what: str, kind: str) -> Path:
    """`folder` as a Path, or a DataError naming the setting `what` if it is missing or not a folder."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise NotAFolderError(f"{what}: {folder} is not a folder (it is a file); point it at the {kind} folder")
    if not root.is_dir():
        raise DataError(f"{what}: {kind} folder {str(folder)!r} does not exist (resolved to {root.resolve()})")
    return root


def list_image_files(folder: str | os.PathLike, what: str) -> list[Path]:
    """All image files under `folder` (recursively), sorted by relative path.

    `what` names the setting the folder came from, for the error messages.
    """
    root = existing_folder(folder, what, "image")
    files = sorted(
        path.relative_to(root)
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"{what}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(folder)!r}")
    return [root / f for f in files]


class ImageFolderReader:
    """Image files read with PIL, converted to RGB or grayscale, optionally
    transformed (e.g. a crop), then resized to resolution x resolution."""

    def __init__(
        self,
        folder: str | os.PathLike,
        resolution: int,
        channels: int,
        what: str,
        transform: Callable[[Image.Image], Image.Image] | None = None,
    ):
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 or 3 for image folders, got {channels}")
        self.root = Path(folder)
        self.files = list_image_files(folder, what)
        self._mode = "RGB" if channels == 3 else "L"
        self._resolution = resolution
        self._transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray:
        image = open_8bit(self.files[index], self._mode)
        if self._transform is not None:
            image = self._transform(image)
        array = np.asarray(resize_image(image, self._resolution), dtype=np.uint8)
        return array.reshape(self._resolution, self._resolution, -1)

    def name(self, index: int) -> str:
        return self.files[index].relative_to(self.root).as_posix()


def _memmap_stored_npz_member(path: Path, member: str) -> np.ndarray | None:
    """Memory-map an uncompressed array inside an .npz, or None if it is compressed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        # The local file header is 30 bytes plus its own name and extra fields,
        # which may differ from the central directory's copy.
        f.seek(info.header_offset)
        local_header = f.read(30)
        name_length = int.from_bytes(local_header[26:28], "little")
        extra_length = int.from_bytes(local_header[28:30], "little")
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        data_offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: array {member!r} holds Python objects, not pixels")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order="F" if fortran_order else "C")


def _memmap_compressed_npz_member(path: Path, key: str, cache_dir: Path) -> np.ndarray:
    """Decompress an array once into an .npy cache file and memory-map that."""
    stat = path.stat()
    cache = cache_dir / f"{path.stem}.{key}.{stat.st_size}.{int(stat.st_mtime)}.npy"
    if not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with np.load(path) as archive:  # one file at a time: a few GB at most
            array = archive[key]
        # A file object: np.save would append '.npy' to a name. Atomic: a full disk leaves no partial cache.
        with atomic_binary_file(cache) as stream:
            np.save(stream, array)
    return np.load(cache, mmap_mode="r")


class NpzReader:
    """Downsampled-ImageNet style .npz files: array `data` of shape (N, C*H*W), uint8, CHW order.

    Arrays are memory-mapped (compressed archives are decompressed once into
    `cache_dir`), so the dataset never has to fit in memory.
    """

    KEY = "data"

    def __init__(self, folder: str | os.PathLike, resolution: int, channels: int, what: str, cache_dir: str | None = None):
        root = existing_folder(folder, what, "npz")
        self.files = sorted(root.glob("*.npz"))
        if not self.files:
            raise DataError(f"{what}: no .npz files under {str(folder)!r}")
        self._shape = (channels, resolution, resolution)
        cache = Path(cache_dir) if cache_dir else root / ".npz_memmap_cache"
        self._arrays = [self._open(path, cache) for path in self.files]
        self._offsets = np.cumsum([0] + [len(a) for a in self._arrays])

    def _open(self, path: Path, cache_dir: Path) -> np.ndarray:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"cannot read npz file {path}: {error}") from None
        member = f"{self.KEY}.npy"
        if member not in members:
            raise DataError(f"npz file {path} has no array {self.KEY!r} (it has {members})")
        array = _memmap_stored_npz_member(path, member)
        if array is None:
            array = _memmap_compressed_npz_member(path, self.KEY, cache_dir)
        expected = int(np.prod(self._shape))
        if array.ndim != 2 or array.shape[1] != expected or array.dtype != np.uint8:
            raise DataError(
                f"npz file {path}: {self.KEY!r} is {array.dtype} {array.shape}, expected uint8 (N, {expected}) "
                f"for data.channels={self._shape[0]}, data.target_res={self._shape[1]}"
            )
        return array

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} is outside [0, {len(self)})")
        file_index = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return file_index, index - int(self._offsets[file_index])

    def read(self, index: int) -> np.ndarray:
        file_index, row = self._locate(index)
        return np.ascontiguousarray(self._arrays[file_index][row].reshape(self._shape).transpose(1, 2, 0))

    def name(self, index: int) -> str:
        file_index, row = self._locate(index)
        return f"{self.files[file_index].stem}_{row:07d}"
