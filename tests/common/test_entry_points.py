"""Both implementations are packages and their scripts run from any directory."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPTS = [
    "efficient_vdvae_torch/train.py",
    "efficient_vdvae_torch/synthesize.py",
    "efficient_vdvae_jax/train.py",
    "efficient_vdvae_jax/convert_checkpoint.py",
    "efficient_vdvae_jax/synthesize.py",
]


@pytest.mark.parametrize("package", ["hparams", "efficient_vdvae_common", "efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_packages_import(package):
    assert importlib.import_module(package).__doc__


CASES = [(script, "elsewhere") for script in SCRIPTS] + [
    ("efficient_vdvae_torch/train.py", "inside its folder"),
    ("efficient_vdvae_jax/train.py", "inside its folder"),
]


@pytest.mark.parametrize("script, where", CASES)
def test_script_runs_from_any_directory(script, where, tmp_path):
    path = REPO_ROOT / script
    if where == "inside its folder":
        command, cwd = [sys.executable, path.name, "--help"], path.parent
    else:
        command, cwd = [sys.executable, str(path), "--help"], tmp_path
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    # --help creates nothing where it runs.
    if where == "elsewhere":
        assert list(tmp_path.iterdir()) == []
