"""train.py of both frameworks with its run folder on a full or read-only disk (issue 12 item 7): one
`error:` line naming the path, exit 2, no temporary file, the previous checkpoint intact.

A real tmpfs as the run folder (tests/tmpfs.py; skipped where mounting is not permitted), a 16x16
two-level model in subprocesses; the JAX cases compile, hence slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs
from tests.tmpfs import fill, leftovers, mounted_tmpfs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
FRAMEWORKS = ["torch", pytest.param("jax", marks=pytest.mark.slow)]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
NAME = "disk"


def _train(framework: str, run_folder: Path, images: Path, steps: int) -> subprocess.CompletedProcess:
    if not images.exists():
        write_random_pngs(images / "train", numbered_pngs(8), seed=1)
        write_random_pngs(images / "val", numbered_pngs(6), seed=2)
    settings = [f"run.name={NAME}", "run.num_gpus=1", "run.num_cpus=1", "data.dataset_source=custom",
                "data.target_res=16", *TWO_LEVEL_MODEL, f"data.train_data_path='{images / 'train'}'",
                f"data.val_data_path='{images / 'val'}'", f"data.synthesis_data_path='{images / 'val'}'",
                "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=6",
                "optimizer.warmup_steps=1", f"train.total_train_steps={steps}"]
    return subprocess.run([sys.executable, str(REPO_ROOT / f"efficient_vdvae_{framework}" / "train.py"),
                           "--config", str(CONFIG), "--set", *settings],
                          cwd=run_folder, capture_output=True, text=True, timeout=600, env=ENV)


def _checked(result: subprocess.CompletedProcess, status: int) -> subprocess.CompletedProcess:
    assert result.returncode == status, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _the_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed run (the last of stderr), with no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())


def _checkpoint_step(framework: str, run_folder: Path) -> int:
    if framework == "torch":
        import torch

        return int(torch.load(run_folder / f"checkpoints-{NAME}", weights_only=True)["global_step"])
    steps = [int(p.name) for p in (run_folder / f"checkpoints-{NAME}").iterdir() if p.name.isdigit()]
    assert all((run_folder / f"checkpoints-{NAME}" / str(s) / "state").is_dir() for s in steps)
    return max(steps)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_full_disk_stops_training_with_one_line(framework, tmp_path):
    """Step 1 is checkpointed; the disk is then filled but for room for step 2's TensorBoard events (as
    much as step 1's) and not for its checkpoint: the checkpoint write fails."""
    with mounted_tmpfs(tmp_path / "run", size="4m") as run_folder:
        _checked(_train(framework, run_folder, tmp_path / "images", steps=1), 0)
        checkpoint = run_folder / f"checkpoints-{NAME}"
        events = _size(run_folder / f"logs-{NAME}" / "train") + _size(run_folder / f"logs-{NAME}" / "val")
        room = events + 64 * 1024
        assert room < _size(checkpoint), "the test needs a checkpoint larger than a step's events"
        fill(run_folder, leave=room)

        line = _the_error_line(_checked(_train(framework, run_folder, tmp_path / "images", steps=2), 2))
        assert line.startswith(f"error: no space left on {checkpoint} ("), line
        assert leftovers(run_folder) == []
        assert _checkpoint_step(framework, run_folder) == 1


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_read_only_run_folder_stops_training_with_one_line(framework, tmp_path):
    with mounted_tmpfs(tmp_path / "run", size="1m", read_only=True) as run_folder:
        line = _the_error_line(_checked(_train(framework, run_folder, tmp_path / "images", steps=1), 2))
        assert line.startswith(f"error: {run_folder}/logs-{NAME}/") and "is read-only" in line, line
        assert list(run_folder.iterdir()) == []
