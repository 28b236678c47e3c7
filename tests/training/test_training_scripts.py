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
