"""Issue 12 item 1: a run whose every update is skipped stops (optimizer.max_consecutive_skips) with one
message and exit status 3, and no checkpoint with non-finite weights is ever written, in both frameworks.

Real `train.py` processes on a two-level 16x16 model. The JAX cases are slow (each process compiles).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TWO_LEVEL_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
FRAMEWORKS = [pytest.param("torch", id="torch"), pytest.param("jax", id="jax", marks=pytest.mark.slow)]


@pytest.fixture
def overrides(training_images):
    image_folders = training_images("torch")  # the same 12 train images for both frameworks

    def _overrides(name: str, *extra: str) -> list[str]:
        return ["data.target_res=16", *TWO_LEVEL_MODEL, f"run.name={name}", "run.num_gpus=1", "run.num_cpus=1",
                "data.dataset_source=custom", f"data.train_data_path='{image_folders['train']}'",
                f"data.val_data_path='{image_folders['val']}'", f"data.synthesis_data_path='{image_folders['val']}'",
                "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=6",
                "optimizer.warmup_steps=0", "train.logging_interval_in_steps=1",
                "train.checkpoint_and_eval_interval_in_steps=1000", "run.max_allowed_checkpoints=1", *extra]
    return _overrides


def _train(framework: str, overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    script = REPO_ROOT / f"efficient_vdvae_{framework}" / "train.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, str(script), "--config", str(CONFIG), "--set", *overrides], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def _error_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _checkpoint(framework: str, overrides: list[str], cwd: Path, name: str):
    """(global step, gradient skip count, {parameter name: array}, {EMA name: array}) of the newest checkpoint."""
    if framework == "torch":
        from efficient_vdvae_torch.checkpoints import load_checkpoint

        state = load_checkpoint(cwd / f"checkpoints-{name}")
        as_numpy = lambda tree: {k: v.numpy() for k, v in tree.items()}  # noqa: E731
        return (state["global_step"], state["gradient_skip_count"], as_numpy(state["model_state_dict"]),
                as_numpy(state["ema_model_state_dict"]))
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.distributed import global_mesh
    from efficient_vdvae_jax.checkpoints import abstract_train_state
    from hparams import load_config

    hp = load_config(CONFIG, overrides=overrides)
    checkpoints = TrainingCheckpoints(cwd / f"checkpoints-{name}", max_to_keep=1)
    abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), NamedSharding(global_mesh(1),
                                                                                PartitionSpec()))
    state, progress = checkpoints.restore(abstract)
    checkpoints.close()
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)  # noqa: E731
                         for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}
    return progress.global_step, progress.gradient_skip_count, flat(state.params), flat(state.ema_params)


def _all_finite(arrays: dict) -> bool:
    return all(np.isfinite(a).all() for a in arrays.values())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_lr_1e6_stops_after_max_consecutive_skips(framework, overrides, tmp_path):
    settings = overrides("lr", "optimizer.learning_rate=1e6", "optimizer.max_consecutive_skips=3",
                         "train.total_train_steps=1000")
    line = _error_line(_train(framework, settings, tmp_path), status=3)
    assert "3 consecutive updates skipped" in line and "optimizer.max_consecutive_skips = 3" in line, line
    # The checkpoint after the first update is the last one: finite, no skip counted in it.
    step, skips, params, ema = _checkpoint(framework, settings, tmp_path, "lr")
    assert step == 1 and skips == 0 and _all_finite(params) and _all_finite(ema)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_non_finite_weights_are_never_checkpointed(framework, overrides, tmp_path):
    """Without gradient skipping the huge updates make the weights NaN; the end-of-run checkpoint
    (the one a stop signal also writes) is refused and the one of step 1 stays."""
    settings = overrides("nan", "optimizer.learning_rate=1e6", "optimizer.gradient_skip=False",
                         "train.total_train_steps=6")
    line = _error_line(_train(framework, settings, tmp_path), status=3)
    assert "not finite" in line and "refusing to write them as a checkpoint" in line, line
    step, _, params, ema = _checkpoint(framework, settings, tmp_path, "nan")
    assert step == 1 and _all_finite(params) and _all_finite(ema)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resumed_checkpoint_with_nan_weights_stops(framework, overrides, tmp_path):
    settings = overrides("resume", "train.total_train_steps=1")
    result = _train(framework, settings, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _poison_checkpoint(framework, settings, tmp_path / "checkpoints-resume")

    line = _error_line(_train(framework, overrides("resume", "train.total_train_steps=5"), tmp_path), status=2)
    assert "checkpoints-resume" in line and "not finite" in line, line
    step, _, params, _ = _checkpoint(framework, settings, tmp_path, "resume")
    assert step == 1 and any(math.isnan(float(a.flat[0])) for a in params.values())  # left as it was


def _poison_checkpoint(framework: str, overrides: list[str], path: Path) -> None:
    """Every weight of the checkpoint's model (not the EMA) set to NaN, written by our own writer."""
    if framework == "torch":
        from efficient_vdvae_torch.checkpoints import load_checkpoint, save_checkpoint

        state = load_checkpoint(path)
        state["model_state_dict"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                                     for k, v in state["model_state_dict"].items()}
        save_checkpoint(state, path)
        return
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.distributed import global_mesh
    from efficient_vdvae_jax.checkpoints import abstract_train_state
    from hparams import load_config

    hp = load_config(CONFIG, overrides=overrides)
    checkpoints = TrainingCheckpoints(path, max_to_keep=1)
    abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), NamedSharding(global_mesh(1),
                                                                                PartitionSpec()))
    state, progress = checkpoints.restore(abstract)
    state = state.replace(params=jax.tree.map(lambda a: np.full(a.shape, np.nan, a.dtype), state.params))
    # One skipped batch more, so that the poisoned state is a newer step than the saved one.
    progress = type(progress)(global_step=progress.global_step, gradient_skip_count=progress.gradient_skip_count + 1,
                              data_epoch=progress.data_epoch, data_batch=progress.data_batch + 1)
    checkpoints.save(state, progress)
    checkpoints.close()
