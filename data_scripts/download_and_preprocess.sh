#!/usr/bin/env bash
# Download and lay out the datasets of the published configurations.
# Archives go to <repo>/dataset_dumps/, ready datasets to <repo>/datasets/
# (the paths of egs/*.cfg, seen from the implementation folders).
# CIFAR-10 and binarized MNIST need no script: the loaders download them
# (torchvision / tensorflow-datasets) on first use.

# `sh download_and_preprocess.sh ...` (the original's usage) starts a POSIX sh
# such as dash, which lacks pipefail, arrays and `local`: re-run under bash.
if [ -z "${BASH_VERSION:-}" ]; then
  if ! command -v bash >/dev/null 2>&1; then
    echo "error: $0 needs bash, which is not installed" >&2
    exit 2
  fi
  exec bash "$0" "$@"
fi
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: download_and_preprocess.sh <imagenet32|imagenet64|celeba|celebahq|ffhq>

  imagenet32  downsampled ImageNet 32x32 (npz)  -> datasets/imagenet_32/{train_data,val_data}
  imagenet64  downsampled ImageNet 64x64 (npz)  -> datasets/imagenet_64/{train_data,val_data}
  celeba      CelebA, cropped for 64x64         -> datasets/celebA/{train_data,val_data,synthesis_data}
              needs two files downloaded by hand into dataset_dumps/ (the script says which)
  celebahq    CelebAHQ 1024x1024, seeded split, 3000 validation images -> datasets/celebAHQ/
  ffhq        FFHQ 1024x1024, seeded split, 7000 validation images     -> datasets/ffhq/

Note: the ImageNet files are image-net.org's box-downsampled versions (as in the
published Efficient-VDVAE table), not the 'small ImageNet' of VDVAE/NVAE; their
likelihoods are not directly comparable.
For the 256x256 configs, resize once with data_scripts/resize_images.py.
Environment: DATASET_DUMPS and DATASETS override the two folders; PYTHON the interpreter.
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO_ROOT/data_scripts"
DUMPS="${DATASET_DUMPS:-$REPO_ROOT/dataset_dumps}"
DATASETS="${DATASETS:-$REPO_ROOT/datasets}"
PYTHON="${PYTHON:-$( [ -x "$REPO_ROOT/.venv/bin/python" ] && echo "$REPO_ROOT/.venv/bin/python" || echo python3 )}"

fetch() {  # fetch URL FILE: download unless FILE is already there
  local url="$1" file="$2"
  if [ -f "$file" ]; then
    echo "found $file"
    return
  fi
  echo "downloading $url"
  if command -v wget >/dev/null; then
    wget --progress=bar:force -O "$file.part" "$url"
  else
    curl -L --fail --progress-bar -o "$file.part" "$url"
  fi
  mv "$file.part" "$file"
}

unpack() {  # unpack ZIP: unzip into dataset_dumps/ (skipped when already unpacked)
  echo "unpacking $1"
  "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$DUMPS"
}

need_manual_files() {  # need_manual_files FILE URL [FILE URL]...: name every missing one, then stop
  local missing=0
  while [ $# -gt 0 ]; do
    if [ ! -f "$DUMPS/$1" ]; then
      [ $missing -eq 1 ] || echo "error: CelebA cannot be downloaded automatically (Google Drive)." >&2
      missing=1
      echo "  $DUMPS/$1 not found; download it by hand from" >&2
      echo "    $2" >&2
    fi
    shift 2
  done
  if [ $missing -eq 1 ]; then
    echo "Put the file(s) in $DUMPS, then run this script again." >&2
    exit 2
  fi
}

imagenet() {  # imagenet RES ARCHIVE...
  local res="$1"; shift
  local out="$DATASETS/imagenet_$res"
  mkdir -p "$out/train_data" "$out/val_data"
  for name in "$@"; do
    fetch "https://image-net.org/data/downsample/$name.zip" "$DUMPS/$name.zip"
    unpack "$DUMPS/$name.zip"
  done
  # The archives unpack to folders of .npz files (named *_npz or by resolution).
  find "$DUMPS" -name '*.npz' -path "$DUMPS/Imagenet${res}_*" | while read -r file; do
    case "$(basename "$file")" in
      val_*) mv "$file" "$out/val_data/" ;;
      *) mv "$file" "$out/train_data/" ;;
    esac
  done
  echo "imagenet $res: $(ls "$out/train_data" | wc -l) train and $(ls "$out/val_data" | wc -l) val npz files in $out"
}

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  usage
  [ $# -eq 1 ] && exit 0 || exit 2
fi

mkdir -p "$DUMPS" "$DATASETS"
case "$1" in
  imagenet32)
    imagenet 32 Imagenet32_train_npz Imagenet32_val_npz ;;
  imagenet64)
    imagenet 64 Imagenet64_train_part1_npz Imagenet64_train_part2_npz Imagenet64_val_npz ;;
  celeba)
    need_manual_files img_align_celeba.zip \
      "https://drive.google.com/file/d/0B7EVK8r0v71pZjFTYXZWM3FlRnM/view?usp=sharing&resourcekey=0-dYn9z10tMJOBAkviAcfdyQ" \
      list_eval_partition.txt \
      "https://drive.google.com/file/d/0B7EVK8r0v71pY0NSMzRuSXJEVkk/view?usp=sharing&resourcekey=0-i4TGCi_51OtQ5K9FSp4EDg"
    [ -d "$DUMPS/img_align_celeba" ] || unpack "$DUMPS/img_align_celeba.zip"
    "$PYTHON" "$SCRIPTS/preprocess_celeba64.py" "$DUMPS/img_align_celeba" "$DUMPS/list_eval_partition.txt" \
      "$DATASETS/celebA" ;;
  celebahq)
    # The filtered 1024x1024 CelebAHQ of github.com/suvojit-0x55aa/celebA-HQ-dataset-download.
    if [ ! -f "$DUMPS/data1024x1024.zip" ]; then
      echo "CelebAHQ is shared on Google Drive (id 1-LFFkFKNuyBO1sjkM4t_AArIXr3JAOyl); if this download fails,"
      echo "download it by hand to $DUMPS/data1024x1024.zip and run this script again."
      fetch "https://drive.usercontent.google.com/download?id=1-LFFkFKNuyBO1sjkM4t_AArIXr3JAOyl&export=download&confirm=t" \
        "$DUMPS/data1024x1024.zip"
    fi
    [ -d "$DUMPS/data1024x1024" ] || unpack "$DUMPS/data1024x1024.zip"
    "$PYTHON" "$SCRIPTS/random_split.py" "$DUMPS/data1024x1024" "$DATASETS/celebAHQ" 3000 ;;
  ffhq)
    fetch "https://archive.org/download/ffhq-dataset/images1024x1024.zip" "$DUMPS/images1024x1024.zip"
    [ -d "$DUMPS/images1024x1024" ] || unpack "$DUMPS/images1024x1024.zip"
    "$PYTHON" "$SCRIPTS/random_split.py" "$DUMPS/images1024x1024" "$DATASETS/ffhq" 7000 ;;
  *)
    echo "error: unknown dataset '$1'" >&2
    usage >&2
    exit 2 ;;
esac
echo "done: $1. The archives in $DUMPS can be deleted to free disk space."
