"""train.py of both frameworks as users run it: the saved-run note once, a corrupt validation image.

Subprocesses of a 16x16 two-level model; the JAX cases compile, hence slow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
FRAMEWORKS = ["efficient_vdvae_torch", pytest.param("efficient_vdvae_jax", marks=pytest.mark.slow)]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
NOTE = "already exists: using its saved configuration"


def _settings(tmp_path: Path, name: str, *extra: str) -> list[str]:
    train, val = tmp_path / "train", tmp_path / "val"
    if not train.exists():
        write_random_pngs(train, numbered_pngs(8), seed=1)
        write_random_pngs(val, numbered_pngs(6), seed=2)
    return [f"run.name={name}", "run.num_gpus=1", "run.num_cpus=1", "data.dataset_source=custom",
            "data.target_res=16", *TWO_LEVEL_MODEL, f"data.train_data_path='{train}'",
            f"data.val_data_path='{val}'", f"data.synthesis_data_path='{val}'", "train.batch_size=4",
            "val.batch_size=4", "val.n_samples_for_validation=6", "optimizer.warmup_steps=1", *extra]


def _train(framework: str, tmp_path: Path, settings: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / framework / "train.py"), "--config", str(CONFIG),
                           "--set", *settings], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV)


def _checked(result: subprocess.CompletedProcess, status: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == status, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _global_step(framework: str, tmp_path: Path, name: str) -> int:
    if framework == "efficient_vdvae_torch":
        from efficient_vdvae_torch.checkpoints import load_checkpoint
        return int(load_checkpoint(tmp_path / f"checkpoints-{name}")["global_step"])
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    checkpoints = TrainingCheckpoints(tmp_path / f"checkpoints-{name}", max_to_keep=5)
    try:
        return int(checkpoints.latest())
    finally:
        checkpoints.close()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_saved_run_note_is_printed_once(framework, tmp_path):
    """Issue 12 item 7's note on a resumed run (the tiny model differs from --config's) comes once, not
    once per config read."""
    settings = _settings(tmp_path, "again", "train.total_train_steps=1")
    first = _checked(_train(framework, tmp_path, settings))
    assert NOTE not in first.stderr
    again = _checked(_train(framework, tmp_path, settings))  # finished: loads the run, trains nothing
    assert again.stderr.count(NOTE) == 1, again.stderr[-3000:]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_corrupt_validation_image_keeps_the_trained_steps(framework, tmp_path):
    """Issue 12 item 4: a truncated image in val_data hit at the step-2 evaluation: one line naming the
    file, exit 2, and a checkpoint of step 2 (not only the step-1 one) to resume from."""
    settings = _settings(tmp_path, "bad", "train.total_train_steps=4",
                         "train.checkpoint_and_eval_interval_in_steps=2")
    _checked(_train(framework, tmp_path, settings[:-2] + ["train.total_train_steps=1"]))
    assert _global_step(framework, tmp_path, "bad") == 1
    image = tmp_path / "val" / "img_004.png"
    image.write_bytes(image.read_bytes()[:60])  # truncated mid-file

    result = _checked(_train(framework, tmp_path, settings), status=2)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len([line for line in lines if line.startswith("error:")]) == 1 and "img_004.png" in lines[-1], \
        result.stderr[-3000:]
    assert _global_step(framework, tmp_path, "bad") == 2
