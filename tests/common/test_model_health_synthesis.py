"""Issue 12 item 5: synthesis on a broken model (NaN weights) names the checkpoint, exits 2, writes nothing.

Both frameworks, every mode; plus finite but overflowing weights, caught on the outputs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from efficient_vdvae_torch.synthesize import main as torch_main
from hparams import load_config

from tests.helpers import REFERENCE_CONFIG as CONFIG
from tests.synthesis_runs import JAX_RUN_NAME, TORCH_RUN_NAME
from tests.helpers import FRAMEWORKS_JAX_SLOW

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODES = ["reconstruction", "generation", "div_stats", "encoding"]


def _torch_broken_copy(run, destination: Path, value: float) -> Path:
    """The torch run's checkpoint with every output-conv weight (trained and EMA) set to `value`."""
    destination.mkdir()
    (destination / f"logs-{TORCH_RUN_NAME}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{TORCH_RUN_NAME}")
    state = torch.load(run.root / f"checkpoints-{TORCH_RUN_NAME}", weights_only=True)
    for key in ("model_state_dict", "ema_model_state_dict"):
        state[key]["top_down.output_conv.weight"].fill_(value)
    torch.save(state, destination / f"checkpoints-{TORCH_RUN_NAME}")
    return destination


def _jax_broken_copy(run, destination: Path, value: float) -> Path:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.distributed import local_mesh
    from efficient_vdvae_jax.checkpoints import abstract_train_state

    destination.mkdir()
    (destination / f"logs-{JAX_RUN_NAME}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{JAX_RUN_NAME}")
    hp = load_config(run.saved_config)
    source = TrainingCheckpoints(run.root / f"checkpoints-{JAX_RUN_NAME}", 1)
    state, progress = source.restore(abstract_train_state(hp, UniversalAutoEncoder(hp),
                                                          NamedSharding(local_mesh(1), PartitionSpec())))
    source.close()

    def break_output_conv(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: leaf * 0 + value if "output_conv" in jax.tree_util.keystr(path)
            and "kernel" in jax.tree_util.keystr(path) else leaf, params)

    state = state.replace(params=break_output_conv(state.params), ema_params=break_output_conv(state.ema_params))
    target = TrainingCheckpoints(destination / f"checkpoints-{JAX_RUN_NAME}", 1)
    target.save(state, progress)
    target.close()
    return destination


def _jax_main(arguments):
    from efficient_vdvae_jax.synthesize import main

    return main(arguments)


FRAMEWORKS = {
    "torch": (_torch_broken_copy, torch_main, TORCH_RUN_NAME, "torch_run"),
    "jax": (_jax_broken_copy, _jax_main, JAX_RUN_NAME, "jax_run"),
}


def _synthesis_outputs(root: Path, run_name: str) -> list[str]:
    logs = root / f"logs-{run_name}"
    return sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*") if p.name != f"hparams-{run_name}.cfg")


def _run(framework, request, tmp_path, monkeypatch, capsys, value: float, mode: str,
         *overrides: str) -> tuple[int, str, Path]:
    make_copy, main, run_name, fixture = FRAMEWORKS[framework]
    run = request.getfixturevalue(fixture)
    root = make_copy(run, tmp_path / "run", value)
    logs = root / f"logs-{run_name}"
    if mode == "encoding":  # encoding needs div_stats: a valid one, so that only the weights are at fault
        (logs / "latents").mkdir()
        np.save(logs / "latents" / "div_stats.npy", np.linspace(0.0, 1.0, 40 if framework == "torch" else 12,
                                                                dtype=np.float32).reshape(-1, 4))
    before = _synthesis_outputs(root, run_name)
    monkeypatch.chdir(root)
    capsys.readouterr()
    code = main(["--config", str(CONFIG), "--set", f"run.name={run_name}", f"synthesis.synthesis_mode={mode}",
                 *overrides])
    stderr = capsys.readouterr().err
    assert _synthesis_outputs(root, run_name) == before  # nothing written
    return code, stderr, root


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("framework", FRAMEWORKS_JAX_SLOW)
def test_nan_weights_name_the_checkpoint(framework, mode, request, tmp_path, monkeypatch, capsys):
    code, stderr, _ = _run(framework, request, tmp_path, monkeypatch, capsys, float("nan"), mode)
    run_name = FRAMEWORKS[framework][2]
    assert code == 2
    [error] = [line for line in stderr.splitlines() if not line.startswith("note:")]
    assert error.startswith("error: checkpoint ")
    assert f"checkpoints-{run_name}" in stderr and "is broken: its EMA weights hold" in stderr
    assert "output_conv" in stderr


@pytest.mark.parametrize("mode", ["reconstruction", "generation"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_overflowing_outputs_are_refused(framework, mode, request, tmp_path, monkeypatch, capsys):
    # Finite weights whose logits overflow float32: caught on the first batch, before its images are written.
    code, stderr, _ = _run(framework, request, tmp_path, monkeypatch, capsys, 3e38, mode)
    assert code == 2
    [error] = [line for line in stderr.splitlines() if not line.startswith("note:")]
    assert error.startswith("error: checkpoint ") and "gives non-finite values in" in error
    assert f"checkpoints-{FRAMEWORKS[framework][2]}" in stderr


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_failure_after_written_batches_leaves_no_file(framework, request, tmp_path, monkeypatch, capsys):
    # Finite weights (output conv 1.0); the second temperature setting overflows the prior samples (z = T * std * eps with
    # T = 3e38), after the first setting's images and grid were produced: the run's images are staged and
    # moved into place only at the end, so none of them appears (`_run` compares the folder listings).
    code, stderr, _ = _run(framework, request, tmp_path, monkeypatch, capsys, 1.0, "generation",
                           "synthesis.temperature_settings=[1.0, 3e38]")
    assert code == 2
    [error] = [line for line in stderr.splitlines() if not line.startswith("note:")]
    assert error.startswith("error: checkpoint ") and "non-finite values in generation 01_T-3e+38" in error
