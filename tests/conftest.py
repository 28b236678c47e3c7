"""Shared pytest fixtures: the reference fixture folder, small configs, and writers of every on-disk
format the data loaders read."""
from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import JAX_TINY_MODEL, TINY_MODEL, check, numbered_pngs, run_training, write_random_pngs
from tests.synthesis_runs import (JAX_RUN_NAME, JAX_SYNTHESIS_NAMES, TORCH_RUN_NAME, TORCH_SYNTHESIS_NAMES,
                                  SynthesisRun, script_env)

# The test process imports both frameworks. torch loads triton lazily (on the first optimizer, through
# torch._dynamo); loaded after jaxlib's threads are up, that import once crashed the process (SIGSEGV in
# triton's extension) in a slow run. Loading it first, before any JAX test, keeps the order fixed.
try:
    import torch._dynamo  # noqa: F401
except ImportError:  # a JAX-only environment
    pass

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests run on the CPU, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Most JAX tests, in this process and in the train.py/synthesize.py processes they start (which inherit
# the environment), compile the same few small models; compiling is most of their time on a CPU. JAX's
# persistent cache (keyed by the program, the compile options and the jax version) lets each compile
# once per machine. A maximum size also turns on the cache's file lock: test workers share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 1024 ** 3))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = FIXTURES / "original_torch_small"
REFERENCE_CONFIG = REFERENCE_DIR / "config.cfg"
# The overrides the reference outputs were produced with (expected.json).
REFERENCE_OVERRIDES = (
    "train.batch_size=4",
    "val.batch_size=4",
    "synthesis.batch_size=4",
    "run.num_gpus=1",
)


@pytest.fixture
def reference_config():
    """The small configuration of the original-code reference outputs."""
    from hparams import load_config

    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES)


@pytest.fixture
def make_config():
    """Build a config from the reference one with extra `section.key=value` overrides."""
    from hparams import load_config

    def _make(*overrides: str):
        return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + tuple(overrides))

    return _make


@pytest.fixture
def single_torch_thread():
    """One torch intra-op thread: on a few shared cores OpenMP's spinning threads
    make small models' steps several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- Writers of every on-disk format the loaders read, with a few dozen real images.

def random_images(count: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 images (N, H, W, C)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, channels), dtype=np.uint8)


def write_png_folder(folder: Path, images: np.ndarray, nested: bool = False, jpeg_every: int = 0) -> list[str]:
    """Write images as PNG (and JPEG every `jpeg_every`-th one); returns relative names in sorted order."""
    names = []
    for i, image in enumerate(images):
        sub = Path(f"part{i % 2}") if nested else Path()
        extension = ".jpg" if jpeg_every and i % jpeg_every == 0 else ".png"
        name = sub / f"img_{i:03d}{extension}"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(folder / name, quality=95)
        names.append(name.as_posix())
    return sorted(names)


def write_imagenet_npz(folder: Path, images: np.ndarray, files: int = 2, compressed: bool = False) -> None:
    """Downsampled-ImageNet layout: `data` rows are C*H*W in CHW order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    save = np.savez_compressed if compressed else np.savez
    for i, chunk in enumerate(np.array_split(rows, files)):
        save(folder / f"train_data_batch_{i + 1}.npz", data=chunk, labels=np.arange(len(chunk)))


def write_cifar10_python(root: Path, train: np.ndarray, test: np.ndarray, monkeypatch) -> None:
    """torchvision's CIFAR-10 layout (root/cifar-10-batches-py/ python pickles).

    torchvision checks each file's md5 against the official files; the
    expected checksums are pointed at the files written here.
    """
    from torchvision.datasets import CIFAR10

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name, images):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": [0] * len(images)}, f)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list = [dump(f"data_batch_{i + 1}", chunk) for i, chunk in enumerate(np.array_split(train, 5))]
    test_list = [dump("test_batch", test)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    meta = {"filename": "batches.meta", "key": "label_names",
            "md5": hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()}
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", meta)


def write_mnist_idx(root: Path, train: np.ndarray, test: np.ndarray) -> None:
    """torchvision's MNIST layout: root/MNIST/raw/*-idx?-ubyte (uncompressed idx files)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, images in (("train", train), ("t10k", test)):
        images = images.reshape(len(images), 28, 28)
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">iiii", 0x803, len(images), 28, 28) + images.tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">ii", 0x801, len(images)) + bytes(len(images)))


@pytest.fixture
def folder_config(make_config, tmp_path):
    """A 'custom' config over train/val/synthesis folders of 16x16 RGB PNGs (24/10/6 images)."""

    def _make(*overrides: str, res: int = 16, channels: int = 3):
        images = random_images(40, res, channels, seed=1)
        for name, part in (("train", images[:24]), ("val", images[24:34]), ("synth", images[34:])):
            if not (tmp_path / name).exists():
                write_png_folder(tmp_path / name, part)
        return make_config(
            "data.dataset_source=custom",
            f"data.train_data_path='{tmp_path / 'train'}'",
            f"data.val_data_path='{tmp_path / 'val'}'",
            f"data.synthesis_data_path='{tmp_path / 'synth'}'",
            f"data.target_res={res}",
            f"data.channels={channels}",
            *overrides,
        ), images

    return _make


@pytest.fixture
def writers():
    """The writers above, for tests (conftest modules cannot be imported under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(
        random_images=random_images,
        write_png_folder=write_png_folder,
        write_imagenet_npz=write_imagenet_npz,
        write_cifar10_python=write_cifar10_python,
        write_mnist_idx=write_mnist_idx,
    )


# ---- The tiny custom-data runs of the training tests. Each framework's folder (tests/torch, tests/jax)
# names its framework in its conftest. PyTorch runs a 7-level model on 12 train PNGs named img_NNN.png (3
# batches of 4 an epoch); JAX, whose compiles are most of its cost, a two-level one on 8 train PNGs named
# NNN.png (2 batches of 4). Both validate on 6 PNGs (JAX: batches of 4 and 2).
TRAINING_RUNS = {
    "torch": {"model": TINY_MODEL, "devices": "run.num_cpus=1", "train_images": 12, "prefix": "img_"},
    "jax": {"model": JAX_TINY_MODEL, "devices": "run.num_gpus=1", "train_images": 8, "prefix": ""},
}


@pytest.fixture(scope="session")
def training_images(tmp_path_factory):
    """framework -> {"train": folder, "val": folder} of its tiny runs, written on first use."""
    folders: dict[str, dict[str, Path]] = {}

    def _folders(framework: str) -> dict[str, Path]:
        if framework not in folders:
            run = TRAINING_RUNS[framework]
            root = tmp_path_factory.mktemp(f"{framework}_images")
            write_random_pngs(root / "train", numbered_pngs(run["train_images"], run["prefix"]), seed=1)
            write_random_pngs(root / "val", numbered_pngs(6, run["prefix"]), seed=2)
            folders[framework] = {"train": root / "train", "val": root / "val"}
        return folders[framework]

    return _folders


@pytest.fixture
def image_folders(framework, training_images) -> dict[str, Path]:
    return training_images(framework)


@pytest.fixture
def run_overrides(framework, image_folders):
    """`section.key=value` settings of a tiny custom-data run (absolute paths: any cwd works)."""
    run = TRAINING_RUNS[framework]

    def _overrides(name: str, *extra: str) -> list[str]:
        return [*run["model"],
                f"run.name={name}",
                run["devices"],
                "data.dataset_source=custom",
                f"data.train_data_path='{image_folders['train']}'",
                f"data.val_data_path='{image_folders['val']}'",
                f"data.synthesis_data_path='{image_folders['val']}'",
                "train.batch_size=4",
                "val.batch_size=4",
                "val.n_samples_for_validation=6",
                "optimizer.warmup_steps=1",
                "train.logging_interval_in_steps=1",
                *extra]
    return _overrides


# ---- The tiny trained runs of the synthesis tests (tests/synthesis_runs.py), on their framework's training
# images and model above. PyTorch: 3 updates, one checkpoint at the end; JAX: 2 updates, checkpointed at the
# end only, and two temperature settings (one a linear range) for generation.
SYNTHESIS_RUNS = {
    "torch": {"name": TORCH_RUN_NAME, "synthesis_images": TORCH_SYNTHESIS_NAMES,
              "settings": ("train.total_train_steps=3", "train.checkpoint_and_eval_interval_in_steps=3")},
    "jax": {"name": JAX_RUN_NAME, "synthesis_images": JAX_SYNTHESIS_NAMES,
            "settings": ("train.total_train_steps=2", "train.checkpoint_and_eval_interval_in_steps=1000",
                         "synthesis.temperature_settings=[0.8, ('linear', 0.7, 0.9)]")},
}


def _train_synthesis_run(framework: str, root: Path) -> SynthesisRun:
    """The framework's training PNGs and 6 synthesis PNGs (two in a subfolder), trained with train.py in `root`."""
    run, synthesis = TRAINING_RUNS[framework], SYNTHESIS_RUNS[framework]
    images = root / "images"
    write_random_pngs(images / "train", numbered_pngs(run["train_images"], run["prefix"]), seed=1)
    write_random_pngs(images / "synthesis", synthesis["synthesis_images"], seed=2)
    overrides = [
        *run["model"],
        f"run.name={synthesis['name']}",
        run["devices"],
        "data.dataset_source=custom",
        f"data.train_data_path='{images / 'train'}'",
        f"data.val_data_path='{images / 'synthesis'}'",
        f"data.synthesis_data_path='{images / 'synthesis'}'",
        "train.batch_size=4",
        "val.batch_size=4",
        "val.n_samples_for_validation=6",
        "optimizer.warmup_steps=1",
        "synthesis.batch_size=4",  # 6 synthesis images: batches of 4 and 2
        "synthesis.div_stats_subset_ratio=0.5",  # half of the train images
        "synthesis.n_generation_batches=2",
        *synthesis["settings"],
    ]
    if framework == "torch":
        train_py = REPO_ROOT / "efficient_vdvae_torch" / "train.py"
        check(subprocess.run([sys.executable, str(train_py), "--config", str(REFERENCE_CONFIG), "--set", *overrides],
                             cwd=root, env=script_env(), capture_output=True, text=True, timeout=600))
    else:
        check(run_training(overrides, cwd=root))
    return SynthesisRun(framework=framework, name=synthesis["name"], root=root, images=images)


@pytest.fixture(scope="session")
def torch_run(tmp_path_factory) -> SynthesisRun:
    """12 train and 6 synthesis PNGs, trained for 3 updates with PyTorch's train.py."""
    return _train_synthesis_run("torch", tmp_path_factory.mktemp("torch_synthesis_run"))


@pytest.fixture(scope="session")
def jax_run(tmp_path_factory) -> SynthesisRun:
    """8 train and 6 synthesis PNGs, trained for 2 updates with JAX's train.py."""
    return _train_synthesis_run("jax", tmp_path_factory.mktemp("jax_synthesis_run"))
