#!/usr/bin/env python
"""Crop the aligned CelebA photographs for the 64x64 protocol and sort them into splits.

Reads img_align_celeba/ (178x218 JPEGs) and the official list_eval_partition.txt
(`<file> <0|1|2>`: 0 train, 1 validation, 2 test), crops every photo to the box
(left 15, top 40, right 163, bottom 188) and writes the crops to
<out>/train_data/, <out>/val_data/ and <out>/synthesis_data/ (the test set).
The loaders resize the 148x148 crops to data.target_res.

By default the crops are re-saved as JPEG, quality 75 with 4:2:0 chroma
subsampling: the original's protocol, on which the published 1.83 bits/dim
was measured (the re-compression changes the pixels, hence the likelihood).
--lossless-png keeps the decoded pixels exactly (numbers then differ from the
paper's).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

from efficient_vdvae_common.data.decoding import open_8bit
from efficient_vdvae_common.data.preprocessing import crop_celeba
from efficient_vdvae_common.data.parallel import map_with_progress

SPLIT_FOLDERS = {0: "train_data", 1: "val_data", 2: "synthesis_data"}
# The original saved with Pillow's JPEG defaults; spelled out so a Pillow
# release with other defaults cannot change the dataset.
JPEG_QUALITY = 75
JPEG_SUBSAMPLING = "4:2:0"


def read_partition(path: Path) -> list[tuple[str, str]]:
    """(file name, split folder) pairs of the official partition file."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{number}: expected '<file> <0|1|2>', got {line!r}")
        pairs.append((fields[0], SPLIT_FOLDERS[int(fields[1])]))
    return pairs


def save_crop(image: Image.Image, target: Path) -> None:
    """Write one crop: JPEG (the original's protocol) for a .jpg target, else lossless PNG."""
    if target.suffix == ".jpg":
        image.save(target, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    else:
        image.save(target, format="PNG")


def crop_one(task: tuple[Path, Path]) -> None:
    source, target = task
    save_crop(crop_celeba(open_8bit(source, "RGB")), target)


def preprocess(images_dir: Path, partition_file: Path, out_dir: Path, workers: int,
               lossless_png: bool = False) -> dict[str, int]:
    pairs = read_partition(partition_file)
    missing = [name for name, _ in pairs if not (images_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {partition_file} are not in {images_dir}, e.g. {missing[0]}")
    suffix = ".png" if lossless_png else ".jpg"
    other = ".jpg" if lossless_png else ".png"
    for folder in SPLIT_FOLDERS.values():
        # Crops of both formats in one folder would be read twice by the loaders.
        stale = next((out_dir / folder).glob(f"*{other}"), None) if (out_dir / folder).is_dir() else None
        if stale is not None:
            raise ValueError(f"{out_dir / folder} already holds {other} crops (e.g. {stale.name}) from an earlier "
                             f"run in the other format; delete {out_dir} or choose another output folder")
    for folder in SPLIT_FOLDERS.values():
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    tasks = [(images_dir / name, out_dir / folder / f"{Path(name).stem}{suffix}") for name, folder in pairs]
    map_with_progress(crop_one, tasks, workers, "cropping CelebA")
    return {folder: sum(f == folder for _, f in pairs) for folder in SPLIT_FOLDERS.values()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", type=Path, help="the unzipped img_align_celeba/ folder")
    parser.add_argument("partition_file", type=Path, help="list_eval_partition.txt")
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (e.g. datasets/celebA)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all CPUs)")
    parser.add_argument("--lossless-png", action="store_true",
                        help="write lossless PNGs instead of the original's JPEG (quality 75, 4:2:0); "
                             "likelihoods are then not comparable with the published ones")
    args = parser.parse_args(argv)
    try:
        counts = preprocess(args.images_dir, args.partition_file, args.out_dir, args.workers, args.lossless_png)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(f"{args.out_dir}: " + ", ".join(f"{n} {folder}" for folder, n in counts.items()))


if __name__ == "__main__":
    main()
