#!/usr/bin/env python
"""Build a small image dataset offline, with no download.

Two kinds (`--kind`):

- `shapes` (default, the quick start's): one red circle, green square or
  blue triangle near the centre of a plain off-white background per
  image, drawn with Pillow at 16x16 by default. Simple enough that a tiny
  model trained for a few minutes on a CPU reconstructs them sharply and
  samples shapes (at 32x32 the same minutes are a quarter as many updates,
  too few for that).
- `photos`: random crops of the photographs bundled with scikit-image at
  32x32, the former quick-start set (harder: minutes of CPU training give
  blurry colour).

Writes the custom-folder layout that `egs/quickstart.cfg` reads:
`<out>/train_data/`, `<out>/val_data/`, `<out>/synthesis_data/` of RGB PNGs.
Shapes: every split has its own seeded random stream. Photos: train crops
come from the left part of every photograph and evaluation crops from the
right part, so evaluation images are never copies of training ones.
Fixed seed, seconds to run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = {"shapes": REPO_ROOT / "datasets" / "shapes16", "photos": REPO_ROOT / "datasets" / "photos32"}
DEFAULT_SIZE = {"shapes": 16, "photos": 32}
SPLITS = ("train_data", "val_data", "synthesis_data")

# Colour photographs that ship inside scikit-image (no download needed).
PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
               "colorwheel", "retina", "coins", "camera", "moon", "page", "text", "logo")
TRAIN_FRACTION_OF_WIDTH = 0.75

# One saturated colour per kind of shape on one off-white background, sizes
# in a narrow range and positions near the centre: a data manifold simple
# enough for a tiny model trained for minutes on a CPU. With the colour drawn
# apart from the shape (three or five colours, anywhere in the frame), such a
# model's pictures got the outlines but blended the colours into brown.
SHAPE_COLOURS = {"circle": (220, 40, 40), "square": (40, 170, 60), "triangle": (40, 90, 220)}
SHAPE_KINDS = tuple(SHAPE_COLOURS)
BACKGROUND = (245, 245, 240)
SIDE_RANGE = (0.5, 0.75)  # the shape's bounding box, as a fraction of the image side
MAX_OFFSET = 0.1  # of the image side: how far the box's centre may be from the image's
# Shapes are drawn at this multiple of the image size and shrunk, for smooth edges.
SUPERSAMPLING = 4


def draw_shape(size: int, rng: np.random.Generator) -> Image.Image:
    """One size x size RGB image: a random shape, colour, size and position on the plain background."""
    big = size * SUPERSAMPLING
    kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    side = rng.uniform(*SIDE_RANGE) * big
    # Near the centre and fully inside the frame (a 5% margin).
    room = min(MAX_OFFSET * big, (0.9 * big - side) / 2)
    left, top = (big - side) / 2 + rng.uniform(-room, room, size=2)
    box = (left, top, left + side, top + side)
    colour = SHAPE_COLOURS[kind]
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left + side / 2, top), (left + side, top + side), (left, top + side)], fill=colour)
    return image.resize((size, size), Image.BOX)


def shapes(count: int, size: int, rng: np.random.Generator) -> Iterator[Image.Image]:
    for _ in range(count):
        yield draw_shape(size, rng)


def load_photographs() -> list[np.ndarray]:
    """The bundled photographs as uint8 RGB arrays (grayscale ones repeated to 3 channels)."""
    from skimage import data as skimage_data  # only the photos kind needs scikit-image

    photos = []
    for name in PHOTOGRAPHS:
        image = np.asarray(getattr(skimage_data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return photos


def random_crops(photos: list[np.ndarray], count: int, size: int, part: str,
                 rng: np.random.Generator) -> Iterator[Image.Image]:
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


def make_sample_dataset(out: Path, n_train: int, n_val: int, n_synthesis: int, size: int, seed: int,
                        kind: str = "shapes") -> None:
    photos = load_photographs() if kind == "photos" else None
    # Photos: one stream through the splits, so the photo set is the one earlier versions wrote.
    photo_rng = np.random.default_rng(seed)
    for split_index, (folder, count) in enumerate(zip(SPLITS, (n_train, n_val, n_synthesis))):
        if photos is None:
            images = shapes(count, size, np.random.default_rng([seed, split_index]))
        else:
            images = random_crops(photos, count, size, "train" if folder == "train_data" else "eval", photo_rng)
        target = out / folder
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for i, image in enumerate(tqdm(images, total=count, desc=folder, disable=not sys.stderr.isatty())):
            image.save(target / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=tuple(DEFAULT_OUT), default="shapes",
                        help="shapes (drawn, the quick start's; default) or photos (crops of scikit-image's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <repo>/datasets/shapes16 for shapes, "
                             "<repo>/datasets/photos32 for photos)")
    parser.add_argument("--n-train", type=int, default=4000, help="number of training images (default 4000)")
    parser.add_argument("--n-val", type=int, default=400, help="number of validation images (default 400)")
    parser.add_argument("--n-synthesis", type=int, default=64, help="number of synthesis images (default 64)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default 16 for shapes, 32 for photos)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = DEFAULT_SIZE[args.kind]
    for name in ("n_train", "n_val", "n_synthesis", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    out = args.out or DEFAULT_OUT[args.kind]
    make_sample_dataset(out, args.n_train, args.n_val, args.n_synthesis, args.size, args.seed, args.kind)
    print(f"wrote {args.n_train} train, {args.n_val} val and {args.n_synthesis} synthesis images "
          f"({args.kind}) to {out}")


if __name__ == "__main__":
    main()
