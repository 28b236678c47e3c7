"""Whole JAX training processes: exact resume, 2 devices vs 1, stop signals. Slow: each run compiles anew."""
from __future__ import annotations

import os
import signal
import subprocess

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from efficient_vdvae_common.training_progress import TrainingProgress
from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.distributed import global_mesh
from hparams import load_config
from jax.sharding import NamedSharding, PartitionSpec
from tests.conftest import REFERENCE_CONFIG
from tests.helpers import logged_scalars
from tests.helpers import check, jax_env, run_training, train_command

pytestmark = pytest.mark.slow


def _latest(overrides: list[str], folder):
    """(TrainState as numpy, TrainingProgress) of a run's newest checkpoint."""
    hp = load_config(REFERENCE_CONFIG, overrides=overrides)
    mesh = global_mesh(1)
    checkpoints = TrainingCheckpoints(folder, max_to_keep=5)
    abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), NamedSharding(mesh, PartitionSpec()))
    state, progress = checkpoints.restore(abstract)
    checkpoints.close()
    return jax.device_get(state), progress


def _assert_trees_close(a, b, rtol: float = 0.0, atol: float = 0.0) -> None:
    paths_a, leaves_a = zip(*jax.tree_util.tree_flatten_with_path(a)[0])
    paths_b, leaves_b = zip(*jax.tree_util.tree_flatten_with_path(b)[0])
    assert paths_a == paths_b
    for path, x, y in zip(paths_a, leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_resume_is_exact(run_overrides, tmp_path):
    """4 steps straight == 2 steps, a new process, 2 more (2 batches per epoch: crossing epochs): the same
    checkpoint and every logged scalar (SSIM's output samples included) bit for bit."""
    every_2 = "train.checkpoint_and_eval_interval_in_steps=2"  # both runs evaluate at steps 1, 2 and 4
    check(run_training(run_overrides("straight", "train.total_train_steps=4", every_2), cwd=tmp_path))
    check(run_training(run_overrides("resumed", "train.total_train_steps=2", every_2), cwd=tmp_path))
    halfway, progress = _latest(run_overrides("resumed"), tmp_path / "checkpoints-resumed")
    assert progress == TrainingProgress(global_step=2, data_epoch=0, data_batch=2)
    result = run_training(run_overrides("resumed", "train.total_train_steps=4", every_2), cwd=tmp_path)
    check(result)
    assert "resuming run 'resumed' at step 2 (epoch 0, batch 2" in result.stdout

    straight, straight_progress = _latest(run_overrides("straight"), tmp_path / "checkpoints-straight")
    resumed, resumed_progress = _latest(run_overrides("resumed"), tmp_path / "checkpoints-resumed")
    assert straight_progress == resumed_progress == TrainingProgress(global_step=4, data_epoch=1, data_batch=2)
    _assert_trees_close(straight, resumed)  # params, EMA, optimiser state, counters: bit for bit
    kernel = lambda state: state.params["top_down"]["output_conv"]["kernel"]  # noqa: E731
    assert not np.array_equal(kernel(straight), kernel(halfway))  # training moved the weights
    assert not np.array_equal(kernel(straight), straight.ema_params["top_down"]["output_conv"]["kernel"])
    straight_scalars = logged_scalars(tmp_path / "logs-straight")
    assert [step for step, _ in straight_scalars["val/Metrics/ssim"]] == [1, 2, 4]
    assert len(straight_scalars["train/Losses/nelbo"]) == 4 and len(straight_scalars) > 15
    assert logged_scalars(tmp_path / "logs-resumed") == straight_scalars


def test_two_devices_match_one(run_overrides, tmp_path):
    """One step on the same global batch, then validation over 5 images (a padded last batch)."""
    # No warm-up, so that the first update moves the weights; a larger Adamax eps keeps near-zero
    # gradients (whose summation order differs) from turning into visibly different updates.
    settings = ("train.total_train_steps=1", "train.checkpoint_and_eval_interval_in_steps=1",
                "optimizer.warmup_steps=0", "optimizer.epsilon=1e-4", "val.n_samples_for_validation=5")
    check(run_training(run_overrides("one", *settings), cwd=tmp_path, devices=1))
    check(run_training(run_overrides("two", *settings, "run.num_gpus=2"), cwd=tmp_path, devices=2))

    one, one_progress = _latest(run_overrides("one", *settings), tmp_path / "checkpoints-one")
    two, two_progress = _latest(run_overrides("two", *settings), tmp_path / "checkpoints-two")
    assert one_progress == two_progress == TrainingProgress(global_step=1, data_epoch=0, data_batch=1)
    _assert_trees_close(one, two, rtol=1e-5, atol=1e-7)
    events = {}
    for name in ("one", "two"):
        accumulator = EventAccumulator(str(tmp_path / f"logs-{name}" / "val"))
        accumulator.Reload()
        events[name] = {tag: accumulator.Scalars(tag)[0].value for tag in accumulator.Tags()["scalars"]}
    assert events["one"].keys() == events["two"].keys()
    for tag, value in events["one"].items():
        assert events["two"][tag] == pytest.approx(value, rel=1e-5, abs=1e-6), tag


@pytest.mark.parametrize("signal_number, whole_group", [
    (signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, False)])
def test_stop_signal_finishes_the_step_checkpoints_and_exits_0(run_overrides, tmp_path, signal_number, whole_group):
    overrides = run_overrides("stopped", "train.total_train_steps=100000")
    process = subprocess.Popen(train_command(overrides), cwd=tmp_path, env=jax_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("step 2/"):
                if whole_group:  # timeout, scancel, kill -- -PGID
                    os.killpg(process.pid, signal_number)
                else:
                    process.send_signal(signal_number)
                break
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "stopped by signal" in stdout
    _, progress = _latest(overrides, tmp_path / "checkpoints-stopped")
    assert 2 <= progress.global_step < 100000
    assert "finished" not in stdout and f"at step {progress.global_step};" in stdout
