"""FID from generation mode (synthesis.compute_fid, efficient_vdvae_common.generation_fid), both frameworks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_common import fid
from tests.common.test_fid import random_inception_weights  # noqa: F401  (module fixture)
from tests.helpers import FRAMEWORKS_JAX_SLOW

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

FRAMEWORKS = {"torch": ("torch_run", "tiny"), "jax": ("jax_run", "tiny_jax")}


def _copy_run(run, name: str, destination: Path) -> Path:
    source = run.root / f"checkpoints-{name}"
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, destination / source.name)
    (destination / f"logs-{name}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{name}")
    return destination


def _main(framework: str):
    if framework == "torch":
        from efficient_vdvae_torch.synthesize import main
    else:
        from efficient_vdvae_jax.synthesize import main
    return main


@pytest.mark.parametrize("framework", FRAMEWORKS_JAX_SLOW)
def test_missing_inception_weights_stop_before_generating(framework, request, tmp_path, monkeypatch, capsys):
    fixture, name = FRAMEWORKS[framework]
    run = request.getfixturevalue(fixture)
    root = _copy_run(run, name, tmp_path)
    monkeypatch.chdir(root)
    code = _main(framework)(["--config", str(run.saved_config), "--set", f"run.name={name}",
                             "synthesis.synthesis_mode=generation", "synthesis.compute_fid=True",
                             f"synthesis.inception_weights='{tmp_path / 'nope.pth'}'"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nope.pth" in err and fid.WEIGHTS_URL in err
    assert not (root / f"logs-{name}" / "synthesis-images").exists()


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_generation_writes_the_fid_of_each_setting(framework, request, tmp_path, monkeypatch, capsys,
                                                   random_inception_weights):  # noqa: F811
    fixture, name = FRAMEWORKS[framework]
    run = request.getfixturevalue(fixture)
    root = _copy_run(run, name, tmp_path)
    monkeypatch.chdir(root)
    # Two settings of 2 samples each (Inception on the CPU is slow), against the 6 synthesis images.
    code = _main(framework)(["--config", str(run.saved_config), "--set", f"run.name={name}",
                             "synthesis.synthesis_mode=generation", "synthesis.compute_fid=True",
                             f"synthesis.inception_weights='{random_inception_weights}'",
                             "synthesis.batch_size=2", "synthesis.n_generation_batches=1",
                             "synthesis.temperature_settings=[1.0, 0.5]"])
    out = capsys.readouterr()
    assert code == 0, out.err
    generated = root / f"logs-{name}" / "synthesis-images" / "generated"
    results = json.loads((generated / "fid.json").read_text())
    assert sorted(results["fid"]) == ["00_T-1", "01_T-0.5"]
    assert results["num_images"] == {"00_T-1": 2, "01_T-0.5": 2} and results["num_reference_images"] == 6
    for setting, value in results["fid"].items():
        assert np.isfinite(value) and value >= 0 and f"FID {setting}: {value:.4f}" in out.out
    # Independently (one setting: each distance costs a 2048 x 2048 matrix square root): pytorch-fid's
    # pipeline on the written PNGs and on the synthesis folder's own files.
    expected = fid.fid(fid.read_folder_images(generated / "00_T-1"), fid.read_folder_images(run.images / "synthesis"),
                       random_inception_weights)
    assert results["fid"]["00_T-1"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
