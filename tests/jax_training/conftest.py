"""Fixtures of the JAX training tests: tiny image folders and the command line of a tiny run.

The runs are subprocesses: the device count is fixed when JAX starts, and a
fresh process is what users run. Compiling is most of their cost on a small
CPU, hence a 16x16 model of three latent groups.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REFERENCE_CONFIG, REPO_ROOT
from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

TRAIN_PY = REPO_ROOT / "efficient_vdvae_jax" / "train.py"

TINY_MODEL = ("data.target_res=16",) + TWO_LEVEL_MODEL


def write_image_folder(folder: Path, count: int, seed: int, size: int = 16) -> None:
    write_random_pngs(folder, numbered_pngs(count, prefix=""), seed, size)


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory) -> dict[str, Path]:
    """8 train PNGs (2 batches of 4 per epoch) and 6 validation PNGs (batches of 4 and 2)."""
    root = tmp_path_factory.mktemp("jax_images")
    write_image_folder(root / "train", 8, seed=1)
    write_image_folder(root / "val", 6, seed=2)
    return {"train": root / "train", "val": root / "val"}


@pytest.fixture
def run_overrides(image_folders):
    """`section.key=value` settings of a tiny custom-data run (absolute paths: any cwd works)."""
    def _overrides(name: str, *extra: str) -> list[str]:
        return [*TINY_MODEL,
                f"run.name={name}",
                "run.num_gpus=1",
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


def train_command(overrides: list[str]) -> list[str]:
    return [sys.executable, str(TRAIN_PY), "--config", str(REFERENCE_CONFIG), "--set", *overrides]


def jax_env(devices: int = 1) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_training(overrides: list[str], cwd: Path, devices: int = 1, timeout: int = 600
                 ) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(overrides), cwd=cwd, env=jax_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
