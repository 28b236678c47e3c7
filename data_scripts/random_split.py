#!/usr/bin/env python
"""Split one folder of images into train_data/ and val_data/ with a seeded random choice.

Used for CelebAHQ (3000 validation images) and FFHQ (7000). The split is
written to disk once, so every run and both frameworks see the same
validation set; the chosen file names are also listed in
<out>/val_files.txt.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from efficient_vdvae_common.data.readers import list_image_files


def choose_validation(names: list[str], n_val: int, seed: int) -> set[str]:
    """`n_val` of the sorted names, chosen by a permutation seeded with `seed`."""
    if not 0 < n_val < len(names):
        raise ValueError(f"--n-val must be in [1, {len(names) - 1}] for {len(names)} images, got {n_val}")
    order = np.random.default_rng(seed).permutation(len(names))
    return {sorted(names)[i] for i in order[:n_val]}


def refuse_existing_split(out_dir: Path) -> None:
    """A second split into the same folder would merge two splits (images in both train and val)."""
    for entry in ("train_data", "val_data", "val_files.txt"):
        path = out_dir / entry
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            raise ValueError(f"{path} already exists: {out_dir} holds a split already; delete it (after moving its "
                             f"images back into the input folder if they were moved) or choose another output folder")


def split_folder(in_dir: Path, out_dir: Path, n_val: int, seed: int, copy: bool) -> tuple[int, int]:
    """Images anywhere below in_dir (e.g. FFHQ's folders of 1000) land flat in train_data/ or val_data/."""
    refuse_existing_split(out_dir)
    paths = list_image_files(in_dir, what=str(in_dir))
    files = {path.name: path for path in paths}
    if len(files) != len(paths):
        raise ValueError(f"image file names below {in_dir} must be unique: the split folders are flat")
    names = sorted(files)
    validation = choose_validation(names, n_val, seed)
    transfer = shutil.copy2 if copy else shutil.move
    for folder in ("train_data", "val_data"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for name in tqdm(names, desc=f"splitting {in_dir.name}"):
        transfer(files[name], out_dir / ("val_data" if name in validation else "train_data") / name)
    (out_dir / "val_files.txt").write_text("".join(f"{n}\n" for n in sorted(validation)))
    return len(names) - len(validation), len(validation)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_dir", type=Path, help="folder holding all the images")
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (train_data/, val_data/)")
    parser.add_argument("n_val", type=int, help="number of validation images (CelebAHQ 3000, FFHQ 7000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice (default 0)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of moving them")
    args = parser.parse_args(argv)
    if not args.in_dir.is_dir():
        parser.error(f"input folder {args.in_dir} does not exist")
    try:
        n_train, n_val = split_folder(args.in_dir, args.out_dir, args.n_val, args.seed, args.copy)
    except ValueError as error:
        parser.error(str(error))
    print(f"{args.out_dir}: {n_train} train and {n_val} validation images (seed {args.seed})")


if __name__ == "__main__":
    main()
