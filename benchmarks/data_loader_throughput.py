#!/usr/bin/env python
"""Loader throughput (images per second) on this machine, both frameworks.

Writes temporary image folders of 64x64 and 256x256 PNG crops of
scikit-image's photographs (and a 64x64 ImageNet-style .npz), then times one
pass of the 'train' split (decode, bit reduction, scaling, flips, batching)
through the PyTorch DataLoader and the JAX prefetching iterator.

    python benchmarks/data_loader_throughput.py [--images 512] [--batch 32] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent

from efficient_vdvae_jax.data import create_iterator
from efficient_vdvae_torch.data import create_dataloader
from hparams import load_config

BASE_CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"


def write_folder(folder: Path, count: int, size: int, seed: int) -> np.ndarray:
    """PNG crops of the bundled photographs (natural statistics, so PNG decoding costs what it does in practice)."""
    from skimage import data as photos

    sources = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket(), photos.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images = []
    for i in range(count):
        photo = sources[i % len(sources)]
        side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2]) + 1))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        image = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        image.save(folder / f"{i:05d}.png")
        images.append(np.asarray(image))
    return np.stack(images)


def config(source: str, path: Path, size: int, batch: int):
    return load_config(BASE_CONFIG, overrides=(
        f"data.dataset_source={source}", f"data.train_data_path='{path}'", f"data.val_data_path='{path}'",
        f"data.synthesis_data_path='{path}'", f"data.target_res={size}", f"train.batch_size={batch}",
        "run.num_gpus=1"))


def images_per_second(batches, count_of) -> tuple[float, int]:
    start = time.perf_counter()
    total = sum(count_of(b) for b in batches)
    return total / (time.perf_counter() - start), total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="images per dataset (default 512)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="loader workers / threads (default: all CPUs)")
    args = parser.parse_args(argv)
    print(f"{len(os.sched_getaffinity(0))} CPUs, {args.workers} workers, batch {args.batch}, {args.images} images")
    print(f"{'dataset':<22}{'torch img/s':>14}{'jax img/s':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for size in (64, 256):
            folder = Path(tmp) / f"folder{size}"
            pixels = write_folder(folder, args.images, size, seed=size)
            cases.append((f"folder {size}x{size} PNG", config("custom", folder, size, args.batch)))
            if size == 64:
                npz = Path(tmp) / "npz64"
                npz.mkdir()
                np.savez(npz / "train_data_batch_1.npz", data=pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1))
                cases.append(("imagenet 64x64 npz", config("imagenet", npz, size, args.batch)))
        for name, hp in cases:
            torch_rate, _ = images_per_second(create_dataloader(hp, "train", num_workers=args.workers),
                                              lambda b: b.shape[0])
            jax_rate, _ = images_per_second(create_iterator(hp, "train", num_devices=1, num_workers=args.workers),
                                            lambda b: b.shape[0] * b.shape[1])
            print(f"{name:<22}{torch_rate:>14.0f}{jax_rate:>14.0f}")


if __name__ == "__main__":
    main()
