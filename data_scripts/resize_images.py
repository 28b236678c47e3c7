#!/usr/bin/env python
"""Resize a folder of images once, offline, so training does not resize at every read.

E.g. CelebAHQ/FFHQ 1024x1024 to 256x256 for the 256 configs:
    python resize_images.py ../datasets/ffhq/train_data ../datasets/ffhq_256/train_data --resolution 256
then point data.*_data_path at the new folders. The default filter is the
loaders' own (bilinear), so pre-resized images match what the loader would
have produced on the fly; --filter lanczos gives sharper downsampling.
--mode center_crop first crops non-square images to their central square.
The folder structure below the input folder is kept; every image becomes a PNG.
"""
from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from PIL import Image

from efficient_vdvae_common.data.decoding import open_8bit
from efficient_vdvae_common.data.readers import list_image_files
from efficient_vdvae_common.data.parallel import map_with_progress

FILTERS = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC}


def center_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def resize_one(paths: tuple[Path, Path], resolution: int, mode: str, resample: int) -> None:
    source, target = paths
    image = open_8bit(source)  # 8-bit gray or RGB by the loaders' rules (16-bit, alpha, palettes)
    if mode == "center_crop":
        image = center_square(image)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.resize((resolution, resolution), resample=resample).save(target)


def refuse_overlapping_folders(in_dir: Path, out_dir: Path) -> None:
    """Writing into the input tree would overwrite originals (a.png -> a.png) or mix outputs into the inputs."""
    source, target = in_dir.resolve(), out_dir.resolve()
    if target == source or source in target.parents:
        raise ValueError(f"output folder {out_dir} is {'the' if target == source else 'inside the'} input folder "
                         f"{in_dir}: the originals would be overwritten or mixed with the resized images; "
                         "choose a folder outside it")
    if target in source.parents:
        raise ValueError(f"output folder {out_dir} contains the input folder {in_dir}; choose a folder outside it")


def resize_folder(in_dir: Path, out_dir: Path, resolution: int, mode: str, filter_name: str, workers: int) -> int:
    refuse_overlapping_folders(in_dir, out_dir)
    files = list_image_files(in_dir, what=str(in_dir))
    tasks = [(f, (out_dir / f.relative_to(in_dir)).with_suffix(".png")) for f in files]
    work = partial(resize_one, resolution=resolution, mode=mode, resample=FILTERS[filter_name])
    map_with_progress(work, tasks, workers, f"resizing to {resolution}")
    return len(tasks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_dir", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="folder to write the resized PNGs to")
    parser.add_argument("--resolution", type=int, required=True, help="side of the square output images")
    parser.add_argument("--mode", choices=("resize", "center_crop"), default="resize",
                        help="resize the whole image (default) or its central square")
    parser.add_argument("--filter", choices=sorted(FILTERS), default="bilinear", help="resampling filter")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all CPUs)")
    args = parser.parse_args(argv)
    if args.resolution < 1:
        parser.error("--resolution must be at least 1")
    try:
        count = resize_folder(args.in_dir, args.out_dir, args.resolution, args.mode, args.filter, args.workers)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(f"wrote {count} images of {args.resolution}x{args.resolution} to {args.out_dir}")


if __name__ == "__main__":
    main()
