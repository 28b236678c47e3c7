"""The same weights reconstruct with the same NELBO in JAX and PyTorch (posterior means: deterministic).

PyTorch runs in a subprocess: its data loader forks workers, which a process running JAX must not do.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from efficient_vdvae_jax.synthesize import main as jax_synthesize_main

from tests.helpers import check, jax_env
from tests.synthesis_runs import JAX_RUN_NAME as RUN_NAME
from tests.synthesis_runs import REPO_ROOT

CONVERT_PY = REPO_ROOT / "efficient_vdvae_jax" / "convert_checkpoint.py"
TORCH_SYNTHESIZE_PY = REPO_ROOT / "efficient_vdvae_torch" / "synthesize.py"
SUMMARY = re.compile(r"(NELBO|reconstruction|KL) (-?[0-9.]+)")


def run_subprocess(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """This Python running `arguments` (a script and its options) in a fresh CPU-only JAX process."""
    return subprocess.run([sys.executable, *arguments], cwd=cwd, env=jax_env(), capture_output=True, text=True,
                          timeout=600)


def _metrics(stdout: str) -> dict[str, float]:
    return {key: float(value) for key, value in SUMMARY.findall(stdout)}


@pytest.mark.slow  # ~17 s: a converter process, a PyTorch process and one more JAX compile
def test_posterior_means_nelbo_equals_torch(jax_run, tmp_path, monkeypatch, capsys):
    jax_root, torch_root = tmp_path / "jax", tmp_path / "torch"
    shutil.copytree(jax_run.root / f"checkpoints-{RUN_NAME}", jax_root / f"checkpoints-{RUN_NAME}")
    for root in (jax_root, torch_root):
        (root / f"logs-{RUN_NAME}").mkdir(parents=True)
        shutil.copy2(jax_run.saved_config, root / f"logs-{RUN_NAME}")
    check(run_subprocess([str(CONVERT_PY), "to-torch", str(jax_root / f"checkpoints-{RUN_NAME}"),
                          str(torch_root / f"checkpoints-{RUN_NAME}"), "--config", str(jax_run.saved_config)],
                         tmp_path))

    arguments = ["--posterior-means", *jax_run.arguments("synthesis.synthesis_mode=reconstruction")]
    monkeypatch.chdir(jax_root)
    assert jax_synthesize_main(arguments) == 0, capsys.readouterr().err
    jax_metrics = _metrics(capsys.readouterr().out)
    result = run_subprocess([str(TORCH_SYNTHESIZE_PY), *arguments], torch_root)
    check(result)
    torch_metrics = _metrics(result.stdout)
    assert jax_metrics["NELBO"] == pytest.approx(torch_metrics["NELBO"], rel=1e-4)
    assert jax_metrics["reconstruction"] == pytest.approx(torch_metrics["reconstruction"], rel=1e-4)
    assert jax_metrics["KL"] == pytest.approx(torch_metrics["KL"], rel=1e-3, abs=1e-5)
    assert jax_metrics["KL"] > 0
