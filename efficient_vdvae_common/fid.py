"""Frechet Inception Distance (FID) with pytorch-fid, the reference implementation papers report.

FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) over the 2048 pool features of the FID Inception-v3
(TensorFlow's weights, ported by pytorch-fid). Images are fed as uint8 RGB (grayscale is repeated to three
channels); pytorch-fid resizes them to 299 x 299 itself.

The weights cannot be downloaded at run time here, so they are read from torch hub's cache, where pytorch-fid
itself would store them (`<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth`), or from an
explicit path; a missing file is one clear error saying where to put it. The file is loaded with
`torch.load(weights_only=True)`: pytorch-fid's own loader would unpickle it without that guard.

    python -m efficient_vdvae_common.fid FOLDER_A FOLDER_B [--inception-weights PATH] [--batch-size 50]

This module imports torch lazily: the rest of efficient_vdvae_common stays framework-free.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from efficient_vdvae_common.data.decoding import open_8bit
from efficient_vdvae_common.data.errors import DataError
from efficient_vdvae_common.data.readers import list_image_files

WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_FILE_NAME = WEIGHTS_URL.rsplit("/", 1)[1]
FEATURE_DIMS = 2048  # the final average-pool features, the ones FID is defined on


class FIDError(RuntimeError):
    """An FID computation that cannot start (missing weights or images); the message says what to do."""


def default_weights_path() -> Path:
    """Where pytorch-fid (through torch hub) keeps the Inception weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE_NAME


def resolve_weights_path(weights: str | Path | None = None) -> Path:
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        raise FIDError(
            f"FID Inception weights not found at {path}: download {WEIGHTS_URL} on a machine with internet access "
            f"and put the file at {default_weights_path()} (or pass --inception-weights PATH)")
    return path


@contextmanager
def _safe_weight_loading(path: Path) -> Iterator[None]:
    """Make pytorch-fid read its state dict from `path` with weights_only=True instead of downloading it."""
    import torch
    from pytorch_fid import inception

    def load_state_dict(url: str, *args: Any, **kwargs: Any) -> dict:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: name it, whatever torch raised
            raise FIDError(f"{path}: not a readable Inception state dict ({error})") from error

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = load_state_dict
    try:
        yield
    finally:
        inception.load_state_dict_from_url = original


def load_inception(weights: str | Path | None = None, device: str = "cpu") -> Any:
    """pytorch-fid's FID Inception-v3 (pool features), weights from `weights` or torch hub's cache."""
    from pytorch_fid.inception import InceptionV3

    path = resolve_weights_path(weights)
    with _safe_weight_loading(path):
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]])
        except RuntimeError as error:  # load_state_dict: missing keys or wrong shapes
            raise FIDError(f"{path}: not the FID Inception-v3 weights ({str(error).splitlines()[0]})") from error
    return model.to(device).eval()


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"FID expects uint8 images, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def _batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(_as_rgb_uint8(image))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def inception_features(model: Any, images: Iterable[np.ndarray], batch_size: int = 50,
                       device: str = "cpu") -> np.ndarray:
    """(N, 2048) pool features of uint8 HWC images (every image counts, including a short last batch)."""
    import torch

    features = []
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
            pooled = model(x)[0]
            features.append(pooled.reshape(pooled.shape[0], -1).double().cpu().numpy())
    if not features:
        raise FIDError("FID needs at least two images on each side, got none")
    return np.concatenate(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the features, as pytorch-fid computes them."""
    if len(features) < 2:
        raise FIDError(f"FID needs at least two images on each side, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """The Frechet distance of two Gaussians (pytorch-fid's implementation, with its numerical safeguards)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(np.atleast_1d(mu_a), np.atleast_2d(sigma_a),
                                            np.atleast_1d(mu_b), np.atleast_2d(sigma_b)))


def read_folder_images(folder: str | Path) -> Iterator[np.ndarray]:
    """Every image file under `folder` (recursively, sorted), as uint8 RGB arrays (the data loaders' pixel rules)."""
    for path in list_image_files(folder, f"FID image folder {folder}"):
        yield np.asarray(open_8bit(path, "RGB"))


def fid(images_a: Iterable[np.ndarray], images_b: Iterable[np.ndarray], weights: str | Path | None = None,
        batch_size: int = 50, device: str = "cpu") -> float:
    """FID between two collections of uint8 HWC images."""
    model = load_inception(weights, device)
    stats_a = feature_statistics(inception_features(model, images_a, batch_size, device))
    stats_b = feature_statistics(inception_features(model, images_b, batch_size, device))
    return frechet_distance(*stats_a, *stats_b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FID between the images of two folders (pytorch-fid's definition).")
    parser.add_argument("folders", nargs=2, type=Path, metavar="FOLDER")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help=f"the FID Inception weights file (default: torch hub's cache, {WEIGHTS_FILE_NAME})")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        value = fid(read_folder_images(args.folders[0]), read_folder_images(args.folders[1]),
                    args.inception_weights, args.batch_size, args.device)
    except (FIDError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"FID {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
