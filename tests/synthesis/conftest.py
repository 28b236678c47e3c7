"""A tiny trained run (real train.py, 3 updates) shared by the synthesis tests."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, numbered_pngs, write_random_pngs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
SYNTHESIZE_PY = REPO_ROOT / "efficient_vdvae_torch" / "synthesize.py"
TRAIN_PY = REPO_ROOT / "efficient_vdvae_torch" / "train.py"
RUN_NAME = "tiny"

# Latent resolution of each group: levels [2, 4, 4, 8, 8, 16, 16], followers [0, 0, 1, 0, 0, 2, 0].
GROUP_RESOLUTIONS = [2, 4, 4, 4, 8, 8, 16, 16, 16, 16]
SYNTHESIS_NAMES = ["img_000.png", "img_001.png", "img_002.png", "img_003.png", "more/img_004.png",
                   "more/img_005.png"]


@dataclass
class TinyRun:
    root: Path  # the folder the run lives in (cwd of the scripts)
    images: Path

    def synthesize(self, *overrides: str, cwd: Path | None = None, args: tuple[str, ...] = ()
                   ) -> subprocess.CompletedProcess:
        """synthesize.py on this run, from `cwd` (default: the run's folder)."""
        return subprocess.run(
            [sys.executable, str(SYNTHESIZE_PY), "--config", str(CONFIG), *args, "--set", f"run.name={RUN_NAME}",
             *overrides],
            cwd=cwd or self.root, env=script_env(), capture_output=True, text=True, timeout=300)

    @property
    def logs(self) -> Path:
        return self.root / f"logs-{RUN_NAME}"

    @property
    def saved_config(self) -> Path:
        return self.logs / f"hparams-{RUN_NAME}.cfg"


def script_env() -> dict[str, str]:
    # One thread: the test machine's few cores are shared.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_torch_thread(single_torch_thread):
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """12 train and 6 synthesis PNGs (two in a subfolder), trained for 3 updates with train.py."""
    root = tmp_path_factory.mktemp("synthesis_run")
    images = root / "images"
    write_random_pngs(images / "train", numbered_pngs(12), seed=1)
    write_random_pngs(images / "synthesis", SYNTHESIS_NAMES, seed=2)
    overrides = TINY_MODEL + (
        f"run.name={RUN_NAME}",
        "run.num_cpus=1",
        "data.dataset_source=custom",
        f"data.train_data_path='{images / 'train'}'",
        f"data.val_data_path='{images / 'synthesis'}'",
        f"data.synthesis_data_path='{images / 'synthesis'}'",
        "train.batch_size=4",
        "val.batch_size=4",
        "val.n_samples_for_validation=6",
        "optimizer.warmup_steps=1",
        "train.total_train_steps=3",
        "train.checkpoint_and_eval_interval_in_steps=3",
        "synthesis.batch_size=4",  # 6 images: batches of 4 and 2
        "synthesis.div_stats_subset_ratio=0.5",  # 6 of the 12 train images
        "synthesis.n_generation_batches=2",
    )
    result = subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(CONFIG), "--set", *overrides],
                            cwd=root, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return TinyRun(root=root, images=images)
