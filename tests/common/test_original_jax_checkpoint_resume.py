"""train.py and synthesize.py of both frameworks take an original-JAX checkpoint where its users unzip one:
`checkpoints-<name>/checkpoint_<step>` in the folder they run from."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REFERENCE_CONFIG, REPO_ROOT
from tests.helpers import FRAMEWORKS, MSGPACK, ORBAX, numbered_pngs, write_random_pngs



def place_original(run_folder, fmt: str, name: str = "small"):
    """Copy a fixture checkpoint to `run_folder/checkpoints-<name>/checkpoint_3` (writable, as unzipped)."""
    target = run_folder / f"checkpoints-{name}" / "checkpoint_3"
    target.parent.mkdir(parents=True)
    if fmt == "msgpack":
        shutil.copyfile(MSGPACK, target)
    else:
        shutil.copytree(ORBAX, target)
        for path in [target, *target.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


def run_script(framework: str, script: str, cwd, images, *settings: str):
    command = [sys.executable, str(REPO_ROOT / f"efficient_vdvae_{framework}" / script),
               "--config", str(REFERENCE_CONFIG), "--set", "run.name=small", "run.num_cpus=1",
               "data.dataset_source=custom", *(f"data.{split}_data_path='{images}'" for split in
                                               ("train", "val", "synthesis")),
               "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=4", "synthesis.batch_size=4",
               *settings]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images32")
    write_random_pngs(folder, numbered_pngs(8), seed=1, size=32)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("framework, fmt", [("torch", "msgpack"), ("jax", "orbax")])
def test_train_resumes_from_the_original_step(tmp_path, images, framework, fmt, original_states):
    original = place_original(tmp_path, fmt)
    before = original.read_bytes() if original.is_file() else None
    result = run_script(framework, "train.py", tmp_path, images, "train.total_train_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout.lower() or "restored" in result.stdout.lower()
    assert "step 4" in result.stdout and "step 1/" not in result.stdout

    if framework == "torch":
        from tests.common.test_original_jax_checkpoint_conversion import restore_torch
        from tests.jax.helpers import load_reference_config

        kept = tmp_path / "checkpoints-small.original-jax" / "checkpoint_3"
        assert kept.read_bytes() == before  # moved aside, untouched
        model, _, optimizer, progress = restore_torch(load_reference_config(), tmp_path / "checkpoints-small")
        weights = {name: p.detach().numpy() for name, p in model.named_parameters()}
        counts = {int(state["step"]) for state in optimizer.state.values()}
        assert counts == {4}
    else:
        from tests.common.test_original_jax_checkpoint_conversion import restore_jax
        from tests.jax.helpers import load_reference_config
        from efficient_vdvae_common.parameter_layouts import flax_params_to_torch_state_dict

        assert sorted(p.name for p in (tmp_path / "checkpoints-small").iterdir()) == ["4", "checkpoint_3"]
        hp = load_reference_config()
        state, progress = restore_jax(hp, tmp_path / "checkpoints-small")
        assert int(state.opt_state[0].count) == 4
        weights = flax_params_to_torch_state_dict(hp, state.params)
    assert progress.global_step == 4
    # One update moved the original's weights.
    start = original_states[fmt].torch_state_dict("params")
    assert any(not np.array_equal(weights[k], start[k]) for k in start)


@pytest.mark.slow
@pytest.mark.parametrize("framework, fmt", [("torch", "orbax"), ("jax", "msgpack")])
def test_synthesize_reads_the_original_checkpoint(tmp_path, images, framework, fmt):
    place_original(tmp_path, fmt)
    result = run_script(framework, "synthesize.py", tmp_path, images, "synthesis.synthesis_mode='reconstruction'")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "original JAX code (step 3)" in result.stdout and "loaded EMA weights" in result.stdout
    assert "NELBO" in result.stdout
