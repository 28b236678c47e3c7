"""A tiny JAX run (real efficient_vdvae_jax/train.py, 2 updates) shared by the JAX synthesis tests.

The modes run in-process through synthesize.main() from the run's folder:
a fresh process per mode would pay JAX's start-up on top of its compiles.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REFERENCE_CONFIG, REPO_ROOT
from tests.helpers import JAX_TINY_MODEL as TINY_MODEL, check, jax_env, run_training, numbered_pngs, write_random_pngs

RUN_NAME = "tiny_jax"
# TINY_MODEL: levels at 8x8 (one follower) and 16x16: three latent groups of 4 variates.
GROUP_RESOLUTIONS = [8, 8, 16]
SYNTHESIS_NAMES = ["a.png", "b.png", "c.png", "d.png", "more/e.png", "more/f.png"]
NUM_TRAIN_IMAGES = 8


@dataclass
class TinyJaxRun:
    root: Path  # the folder the run lives in (cwd of the scripts)
    images: Path

    @property
    def logs(self) -> Path:
        return self.root / f"logs-{RUN_NAME}"

    @property
    def saved_config(self) -> Path:
        return self.logs / f"hparams-{RUN_NAME}.cfg"

    def arguments(self, *overrides: str) -> list[str]:
        """synthesize.py arguments for this run (the saved config is read; --set changes [synthesis])."""
        return ["--config", str(REFERENCE_CONFIG), "--set", f"run.name={RUN_NAME}", *overrides]


def _write_named_images(folder: Path, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture(scope="session")
def jax_run(tmp_path_factory) -> TinyJaxRun:
    """8 train and 6 synthesis PNGs (two in a subfolder), trained for 2 updates with train.py."""
    root = tmp_path_factory.mktemp("jax_synthesis_run")
    images = root / "images"
    write_random_pngs(images / "train", numbered_pngs(NUM_TRAIN_IMAGES, prefix=""), seed=1)
    _write_named_images(images / "synthesis", SYNTHESIS_NAMES, seed=2)
    overrides = [
        *TINY_MODEL,
        f"run.name={RUN_NAME}",
        "run.num_gpus=1",
        "data.dataset_source=custom",
        f"data.train_data_path='{images / 'train'}'",
        f"data.val_data_path='{images / 'synthesis'}'",
        f"data.synthesis_data_path='{images / 'synthesis'}'",
        "train.batch_size=4",
        "val.batch_size=4",
        "val.n_samples_for_validation=6",
        "optimizer.warmup_steps=1",
        "train.total_train_steps=2",
        "train.checkpoint_and_eval_interval_in_steps=1000",
        "synthesis.batch_size=4",  # 6 synthesis images: batches of 4 and 2 (padded)
        "synthesis.div_stats_subset_ratio=0.5",  # 4 of the 8 train images
        "synthesis.n_generation_batches=2",
        "synthesis.temperature_settings=[0.8, ('linear', 0.7, 0.9)]",
    ]
    result = run_training(overrides, cwd=root)
    check(result)
    return TinyJaxRun(root=root, images=images)


def run_subprocess(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """This Python running `arguments` (a script and its options) in a fresh CPU-only JAX process."""
    return subprocess.run([sys.executable, *arguments], cwd=cwd, env=jax_env(), capture_output=True, text=True,
                          timeout=600)
