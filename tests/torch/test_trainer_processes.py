"""Whole training processes: train.sh with 2 gloo ranks vs one process, SIGTERM handling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from efficient_vdvae_torch.checkpoints import load_checkpoint

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO_ROOT / "efficient_vdvae_torch" / "train.sh"
TRAIN_PY = REPO_ROOT / "efficient_vdvae_torch" / "train.py"
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"


def _env(**extra: str) -> dict[str, str]:
    # One thread per process: two ranks share the machine's cores.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_two_ranks_match_one_process(run_overrides, tmp_path, assert_same_tree):
    """Same global batch (4 = 2 x 2), same seed: after the first update with a non-zero
    learning rate (step 0 has lr 0 in warm-up) the weights agree to float32 precision.

    Adamax divides by max(|g|, eps): with eps = 1e-8 a gradient that is zero up
    to rounding (~1e-9, whose value depends on the summation order) becomes an
    update of a sizeable fraction of lr. eps = 1e-4 keeps the comparison about
    the gradients, which is what data parallelism could get wrong.
    """
    overrides = run_overrides("ddp", "train.total_train_steps=2", "train.checkpoint_and_eval_interval_in_steps=2",
                              "optimizer.epsilon=1e-4")
    two, one = tmp_path / "two_ranks", tmp_path / "one_process"
    two.mkdir()
    one.mkdir()
    _check(subprocess.run(["sh", str(TRAIN_SH), "--config", str(CONFIG), "--set", *overrides, "run.num_gpus=2"],
                          cwd=two, env=_env(NUM_GPUS_PER_NODE="2"), capture_output=True, text=True, timeout=600))
    _check(subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(CONFIG), "--set", *overrides],
                          cwd=one, env=_env(), capture_output=True, text=True, timeout=600))

    a, b = load_checkpoint(two / "checkpoints-ddp"), load_checkpoint(one / "checkpoints-ddp")
    assert a["global_step"] == b["global_step"] == 2
    for key in ("model_state_dict", "ema_model_state_dict", "optimizer_state_dict"):
        assert_same_tree(a[key], b[key], key, atol=1e-6)
    initial = a["ema_model_state_dict"]["top_down.output_conv.weight"]
    assert (a["model_state_dict"]["top_down.output_conv.weight"] - initial).abs().max() > 1e-4

    # Validation of the 6 images (global batches of 4 and 2, split 2+2 and 1+1 over the ranks)
    # gives the single process's means: seeded noise, sums over ranks divided by image counts.
    # (SSIM is left out: it scores output samples, which each rank draws from its own RNG.)
    val_two, val_one = EventAccumulator(str(two / "logs-ddp" / "val")), EventAccumulator(str(one / "logs-ddp" / "val"))
    val_two.Reload()
    val_one.Reload()
    for tag in ("Losses/reconstruction", "Losses/kl_div", "Losses/nelbo", "Latent_KL/group_00", "Latent_KL/group_09"):
        two_ranks, one_process = val_two.Scalars(tag), val_one.Scalars(tag)
        assert [e.step for e in two_ranks] == [e.step for e in one_process] == [1, 2]  # first and last update
        assert [e.value for e in two_ranks] == pytest.approx([e.value for e in one_process], rel=1e-5), tag
    # Rank 0 alone wrote events.
    assert len(list((two / "logs-ddp" / "train").iterdir())) == 1


@pytest.mark.parametrize("signal_number, whole_group", [
    (signal.SIGTERM, False),  # a scheduler stopping the job
    (signal.SIGTERM, True),  # timeout, scancel, kill -- -PGID: the data-loader workers get it too
    (signal.SIGINT, True),  # Ctrl-C in a terminal
])
def test_stop_signal_finishes_the_step_checkpoints_and_exits_0(run_overrides, tmp_path, signal_number,
                                                               whole_group):
    overrides = run_overrides("stop", "train.total_train_steps=100000",
                              "train.checkpoint_and_eval_interval_in_steps=100000")
    process = subprocess.Popen([sys.executable, str(TRAIN_PY), "--config", str(CONFIG), "--set", *overrides],
                               cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        for line in process.stdout:  # wait until training is under way
            if line.startswith("step 2/"):
                break
        if whole_group:
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"{signal.Signals(signal_number).name} received" in err
    state = load_checkpoint(tmp_path / "checkpoints-stop")
    assert state["global_step"] >= 2
    assert state["data_epoch"] * 3 + state["data_batch"] == state["global_step"] + state["gradient_skip_count"]
    assert f"stopped by signal at step {state['global_step']}" in out


@pytest.mark.slow  # two ranks on a shared CPU: about a minute
def test_sigterm_to_the_process_group_of_train_sh_with_two_ranks(run_overrides, tmp_path):
    """Issue 12 item 2: `sh train.sh` with 2 ranks, SIGTERM to the whole group (launcher, ranks, workers):
    the ranks finish the step, rank 0 checkpoints, and the script exits 0 without a traceback."""
    overrides = run_overrides("group", "train.total_train_steps=100000",
                              "train.checkpoint_and_eval_interval_in_steps=100000", "run.num_gpus=2")
    process = subprocess.Popen(["sh", str(TRAIN_SH), "--config", str(CONFIG), "--set", *overrides], cwd=tmp_path,
                               env=_env(NUM_GPUS_PER_NODE="2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("step 2/"):
                break
        os.killpg(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    state = load_checkpoint(tmp_path / "checkpoints-group")
    assert state["global_step"] >= 2
    assert f"stopped by signal at step {state['global_step']}" in out
