"""Bad input to the JAX train.py: exit status 2, one line naming the culprit, nothing left behind."""
from __future__ import annotations

from tests.helpers import run_training


def _one_error_line(result) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_key_exits_2(run_overrides, tmp_path):
    line = _one_error_line(run_training(run_overrides("bad", "train.batch_sise=4"), cwd=tmp_path))
    assert "batch_sise" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_train_folder_exits_2(run_overrides, tmp_path):
    missing = tmp_path / "no_such_folder"
    line = _one_error_line(run_training(run_overrides("nodata", f"data.train_data_path='{missing}'"),
                                        cwd=tmp_path))
    assert "no_such_folder" in line
    assert list(tmp_path.iterdir()) == []


def test_batch_not_divisible_by_devices_names_the_key(run_overrides, tmp_path):
    line = _one_error_line(run_training(run_overrides("odd", "val.batch_size=3"), cwd=tmp_path, devices=2))
    assert "val.batch_size = 3 is not divisible by the 2" in line
    assert list(tmp_path.iterdir()) == []
