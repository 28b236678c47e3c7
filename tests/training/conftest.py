"""Fixtures of the training tests: a tiny image folder dataset and run settings for it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, numbered_pngs, write_random_pngs



def write_image_folder(folder: Path, count: int, seed: int, size: int = 16) -> None:
    write_random_pngs(folder, numbered_pngs(count), seed, size)


@pytest.fixture(autouse=True)
def _one_torch_thread(single_torch_thread):
    yield


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory) -> dict[str, Path]:
    """12 train and 6 validation PNGs (3 train batches of 4 per epoch)."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "train", 12, seed=1)
    write_image_folder(root / "val", 6, seed=2)
    return {"train": root / "train", "val": root / "val"}


@pytest.fixture
def run_overrides(image_folders):
    """`section.key=value` settings of a tiny custom-data run (absolute paths: any cwd works)."""
    def _overrides(name: str, *extra: str) -> tuple[str, ...]:
        return TINY_MODEL + (
            f"run.name={name}",
            "run.num_cpus=1",
            "data.dataset_source=custom",
            f"data.train_data_path='{image_folders['train']}'",
            f"data.val_data_path='{image_folders['val']}'",
            f"data.synthesis_data_path='{image_folders['val']}'",
            "train.batch_size=4",
            "val.batch_size=4",
            "val.n_samples_for_validation=6",
            "optimizer.warmup_steps=1",
            "train.logging_interval_in_steps=1",
        ) + extra
    return _overrides


def _assert_same_tree(a, b, where: str = "", atol: float = 0.0) -> None:
    """Nested dicts/lists of tensors and numbers are equal (to `atol` for tensors)."""
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{index}]", atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{where}: {m}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def assert_same_tree():
    return _assert_same_tree
