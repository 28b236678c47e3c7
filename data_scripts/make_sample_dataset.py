#!/usr/bin/env python
"""Build a small real-image dataset offline: random crops of scikit-image's bundled photographs.

Writes the custom-folder layout that `egs/quickstart.cfg` reads:
`<out>/train_data/`, `<out>/val_data/`, `<out>/synthesis_data/` of RGB PNGs.
Train and evaluation crops come from disjoint photographs' halves (the left
part of every photograph feeds train, the right part val and synthesis), so
evaluation images are never copies of training ones. Fixed seed, seconds to run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
# Colour photographs that ship inside scikit-image (no download needed).
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
               "colorwheel", "retina", "coins", "camera", "moon", "page", "text", "logo")
TRAIN_FRACTION_OF_WIDTH = 0.75


def load_photographs() -> list[np.ndarray]:
    """The bundled photographs as uint8 RGB arrays (grayscale ones repeated to 3 channels)."""
    photos = []
    for name in PHOTOGRAPHS:
        image = np.asarray(getattr(skimage_data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return photos


def random_crops(photos: list[np.ndarray], count: int, size: int, part: str, rng: np.random.Generator):
    """`count` crops of size x size, from the train (left) or evaluation (right) part of the photographs,
    at a random scale (so that crops show more than flat patches), resized with PIL."""
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        split_x = int(width * TRAIN_FRACTION_OF_WIDTH)
        left, right = (0, split_x) if part == "train" else (split_x, width)
        side = int(rng.integers(size, max(size + 1, min(height, right - left, 4 * size)) + 1))
        side = min(side, height, right - left)
        x = int(rng.integers(left, right - side + 1))
        y = int(rng.integers(0, height - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.BILINEAR)


def make_sample_dataset(out: Path, n_train: int, n_val: int, n_synthesis: int, size: int, seed: int) -> None:
    photos = load_photographs()
    rng = np.random.default_rng(seed)
    for folder, count, part in (("train_data", n_train, "train"), ("val_data", n_val, "eval"),
                                ("synthesis_data", n_synthesis, "eval")):
        target = out / folder
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        crops = random_crops(photos, count, size, part, rng)
        for i, crop in enumerate(tqdm(crops, total=count, desc=folder, disable=not sys.stderr.isatty())):
            crop.save(target / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "datasets" / "sample32",
                        help="output folder (default: <repo>/datasets/sample32)")
    parser.add_argument("--n-train", type=int, default=4000, help="number of training images (default 4000)")
    parser.add_argument("--n-val", type=int, default=400, help="number of validation images (default 400)")
    parser.add_argument("--n-synthesis", type=int, default=64, help="number of synthesis images (default 64)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    for name in ("n_train", "n_val", "n_synthesis", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    make_sample_dataset(args.out, args.n_train, args.n_val, args.n_synthesis, args.size, args.seed)
    print(f"wrote {args.n_train} train, {args.n_val} val and {args.n_synthesis} synthesis images to {args.out}")


if __name__ == "__main__":
    main()
