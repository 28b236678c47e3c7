"""reset.sh of both implementations, and train.py's one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"


@pytest.mark.parametrize("implementation", ["efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_reset_removes_one_run(tmp_path, implementation):
    script = REPO_ROOT / implementation / "reset.sh"
    for path in ("logs-a/train", "checkpoints-a.history", "logs-ab", "checkpoints-ab"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "checkpoints-a").write_bytes(b"x")

    result = subprocess.run(["sh", str(script), "a"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-ab", "logs-ab"]
    assert "removed" in result.stdout and "logs-a" in result.stdout

    again = subprocess.run(["sh", str(script), "a"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 1 and "nothing to remove for run 'a'" in again.stderr
    for bad in ([], ["../x"]):
        refused = subprocess.run(["sh", str(script), *bad], cwd=tmp_path, capture_output=True, text=True)
        assert refused.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-ab", "logs-ab"]


def test_missing_data_folder_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "efficient_vdvae_torch" / "train.py"), "--config", str(CONFIG),
         "--set", "run.name=nodata", "data.dataset_source=custom", f"data.train_data_path='{tmp_path}/missing'",
         f"data.val_data_path='{tmp_path}/missing'"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "missing" in result.stderr
    assert not (tmp_path / "checkpoints-nodata").exists() and not (tmp_path / "logs-nodata").exists()


@pytest.mark.parametrize("value", ["0", "abc", "-1", "2x"])
def test_num_gpus_per_node_must_be_a_positive_number(tmp_path, value):
    """Issue 12 item 7: one line naming the variable, exit 2, before anything starts."""
    result = subprocess.run(["sh", str(REPO_ROOT / "efficient_vdvae_torch" / "train.sh")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "NUM_GPUS_PER_NODE": value, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: NUM_GPUS_PER_NODE={value}: expected a positive whole number (the processes to start on this "
        "machine)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("implementation", ["efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_run_folder_that_is_a_file_is_one_line(tmp_path, implementation):
    """Issue 12 item 7: logs-<name> exists as a file: exit 2, one line naming it, the file untouched."""
    from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

    write_random_pngs(tmp_path / "images", numbered_pngs(8), seed=1)
    (tmp_path / "logs-taken").write_text("not a folder")
    images = f"'{tmp_path / 'images'}'"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / implementation / "train.py"), "--config", str(CONFIG), "--set",
         "run.name=taken", "run.num_gpus=1", "data.dataset_source=custom", "data.target_res=16", *TWO_LEVEL_MODEL,
         f"data.train_data_path={images}", f"data.val_data_path={images}", f"data.synthesis_data_path={images}",
         "train.batch_size=4", "val.batch_size=4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "logs-taken is a file, not a folder" in lines[0], \
        result.stderr[-3000:]
    assert (tmp_path / "logs-taken").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "logs-taken"]
