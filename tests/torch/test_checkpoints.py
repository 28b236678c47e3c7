"""Checkpoint files: atomic writes, rotation, weights-only loading, original-layout compatibility."""
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from efficient_vdvae_torch.checkpoints import (checkpoint_path, history_dir, load_checkpoint, remove_stale_temp_files,
                                               restore_training_state, save_checkpoint, training_state)

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[2]


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2)


def _training_objects(seed=0, two_groups=False):
    torch.manual_seed(seed)
    model, ema = TwoLayers(), TwoLayers()
    if two_groups:  # like a weight-decay mask: weights and biases in separate groups
        groups = [{"params": [model.first.weight, model.second.weight]},
                  {"params": [model.first.bias, model.second.bias]}]
    else:
        groups = model.parameters()
    optimizer = torch.optim.Adamax(groups, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, step / 10))
    return model, ema, optimizer, scheduler


def _take_steps(model, optimizer, scheduler, n):
    for _ in range(n):
        model.second(model.first(torch.ones(1, 3))).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()


def test_round_trip_restores_everything(tmp_path):
    model, ema, optimizer, scheduler = _training_objects()
    _take_steps(model, optimizer, scheduler, 3)
    ema.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
    progress = TrainingProgress(global_step=3, gradient_skip_count=2, data_epoch=1, data_batch=5)
    path = checkpoint_path("run", tmp_path)
    save_checkpoint(training_state(progress, model, ema, optimizer, scheduler), path)
    assert path == tmp_path / "checkpoints-run" and path.is_file()

    model2, ema2, optimizer2, scheduler2 = _training_objects(seed=1)
    restored = restore_training_state(load_checkpoint(path), model2, ema2, optimizer2, scheduler2)
    assert restored == progress
    for a, b in zip(list(model.parameters()) + list(ema.parameters()),
                    list(model2.parameters()) + list(ema2.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert scheduler2.last_epoch == 3 and optimizer2.param_groups[0]["lr"] == pytest.approx(0.3)
    # The next step is the same from either copy.
    _take_steps(model, optimizer, scheduler, 1)
    _take_steps(model2, optimizer2, scheduler2, 1)
    torch.testing.assert_close(model.state_dict(), model2.state_dict(), rtol=0, atol=0)


def test_resume_from_ema_loads_ema_weights_into_the_model(tmp_path):
    model, ema, optimizer, scheduler = _training_objects()
    ema.load_state_dict({k: torch.full_like(v, 7.0) for k, v in model.state_dict().items()})
    save_checkpoint(training_state(TrainingProgress(), model, ema, optimizer, scheduler), tmp_path / "c")
    model2, ema2, optimizer2, scheduler2 = _training_objects(seed=1)
    restore_training_state(load_checkpoint(tmp_path / "c"), model2, ema2, optimizer2, scheduler2,
                           resume_from_ema=True)
    assert all(torch.all(p == 7.0) for p in model2.parameters())


def test_rotation_keeps_the_newest(tmp_path):
    model, ema, optimizer, scheduler = _training_objects()
    path = tmp_path / "checkpoints-run"
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(training_state(TrainingProgress(global_step=step), model, ema, optimizer, scheduler),
                        path, max_allowed_checkpoints=3)
    kept = sorted(p.name for p in history_dir(path).iterdir())
    assert kept == ["global_step-30", "global_step-40", "global_step-50"]
    assert load_checkpoint(path)["global_step"] == 50
    assert load_checkpoint(history_dir(path) / "global_step-30")["global_step"] == 30


def test_single_checkpoint_has_no_history(tmp_path):
    model, ema, optimizer, scheduler = _training_objects()
    save_checkpoint(training_state(TrainingProgress(), model, ema, optimizer, scheduler), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_missing_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "checkpoints-nothing") is None


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "cannot read checkpoint"),
    ({"global_step": 1}, "lacks the keys"),
])
def test_bad_checkpoints_name_the_file(tmp_path, content, message):
    path = tmp_path / "checkpoints-bad"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_directory_is_refused(tmp_path):
    (tmp_path / "checkpoints-jax").mkdir()
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path / "checkpoints-jax")


def test_code_in_a_checkpoint_is_not_executed(tmp_path):
    path = tmp_path / "checkpoints-evil"
    torch.save({"global_step": 0, "model_state_dict": {}, "ema_model_state_dict": {},
                "optimizer_state_dict": {}, "scheduler_state_dict": Path("x")}, path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)


def test_original_checkpoint_loads_and_maps_optimizer_state(tmp_path):
    """The original saved one param group in model.parameters() order, and the index of its last step."""
    model, ema, _, _ = _training_objects()
    parameters = list(model.parameters())
    original_state = {i: {"step": 9, "exp_avg": torch.full_like(p, float(i)),
                          "exp_inf": torch.full_like(p, 10.0 + i)} for i, p in enumerate(parameters)}
    original = {
        "global_step": 9,
        "model_state_dict": {k: v + 1 for k, v in model.state_dict().items()},
        "ema_model_state_dict": ema.state_dict(),
        "optimizer_state_dict": {"state": original_state, "param_groups": [
            {"lr": 1.0, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
             "params": list(range(len(parameters)))}]},
        "scheduler_state_dict": {"last_epoch": 9, "base_lrs": [1.0], "warmup_steps": 100},
    }
    torch.save(original, tmp_path / "checkpoints-orig")

    model2, ema2, optimizer2, scheduler2 = _training_objects(seed=3, two_groups=True)
    progress = restore_training_state(load_checkpoint(tmp_path / "checkpoints-orig"),
                                      model2, ema2, optimizer2, scheduler2)
    assert progress == TrainingProgress(global_step=10)
    torch.testing.assert_close(model2.state_dict(), original["model_state_dict"])
    # Parameter i of model.parameters() gets original state i whatever group it sits in now.
    for i, parameter in enumerate(model2.parameters()):
        assert torch.all(optimizer2.state[parameter]["exp_avg"] == float(i))
        assert torch.all(optimizer2.state[parameter]["exp_inf"] == 10.0 + i)
    assert scheduler2.last_epoch == 10
    assert [g["lr"] for g in optimizer2.param_groups] == [1.0, 1.0]  # min(1, 10/10) of our own lambda


_KILL_DURING_SAVE = textwrap.dedent("""
    import io, sys, time
    import torch
    from efficient_vdvae_torch.checkpoints import save_checkpoint

    path = sys.argv[1]
    save_checkpoint({"global_step": 1, "model_state_dict": {"w": torch.ones(1000)},
                     "ema_model_state_dict": {}, "optimizer_state_dict": {},
                     "scheduler_state_dict": {}}, path)
    real_save = torch.save

    def slow_save(obj, file):
        # Write half of the bytes, then hang: the parent kills us mid-write.
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        file.write(data[:len(data) // 2])
        file.flush()
        print("writing", flush=True)
        time.sleep(60)

    torch.save = slow_save
    save_checkpoint({"global_step": 2, "model_state_dict": {"w": torch.zeros(1000)},
                     "ema_model_state_dict": {}, "optimizer_state_dict": {},
                     "scheduler_state_dict": {}}, path)
""")


def test_sigkill_while_writing_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints-run"
    child = subprocess.Popen([sys.executable, "-c", _KILL_DURING_SAVE, str(path)], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert leftovers, "the half-written temp file should be there"
    state = load_checkpoint(path)
    assert state["global_step"] == 1 and torch.all(state["model_state_dict"]["w"] == 1)
    remove_stale_temp_files(path)
    assert sorted(tmp_path.iterdir()) == [path]


def test_original_checkpoint_of_the_reference_model(reference_config, tmp_path):
    """The original's weights (tests/fixtures) in an original-layout file resume our model and optimiser."""
    import copy

    import numpy as np

    from efficient_vdvae_torch.model import UniversalAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer
    from efficient_vdvae_torch.model.schedules import learning_rate_schedule
    from efficient_vdvae_torch.train_step import train_step

    weights = np.load(REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "weights.npz")
    state_dict = {name: torch.from_numpy(weights[name]) for name in weights.files}  # the original's order
    original_state = {i: {"step": 41, "exp_avg": torch.full_like(v, float(i)), "exp_inf": torch.ones_like(v)}
                      for i, v in enumerate(state_dict.values())}
    torch.save({
        "global_step": 40,
        "model_state_dict": state_dict,
        "ema_model_state_dict": state_dict,
        "optimizer_state_dict": {"state": original_state, "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
             "params": list(range(len(state_dict)))}]},
        "scheduler_state_dict": {"T_max": 750000, "eta_min": 2e-4, "base_lrs": [1e-3], "last_epoch": 40,
                                 "_step_count": 41, "_last_lr": [4e-4], "decay_steps": 750000,
                                 "decay_start": 50000, "minimum_learning_rate": 2e-4, "warmup_steps": 100.0},
    }, tmp_path / "checkpoints-small")

    hp = reference_config
    model = UniversalAutoEncoder(hp)
    ema = copy.deepcopy(model)
    optimizer = build_optimizer(hp, model)
    scheduler = learning_rate_schedule(hp, optimizer)
    progress = restore_training_state(load_checkpoint(tmp_path / "checkpoints-small"), model, ema, optimizer,
                                      scheduler)
    assert progress.global_step == 41
    named = dict(model.named_parameters())
    for i, name in enumerate(state_dict):
        torch.testing.assert_close(named[name].detach(), state_dict[name], rtol=0, atol=0)
        assert torch.all(optimizer.state[named[name]]["exp_avg"] == float(i)), name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 41 / 100)  # our warm-up at step 41
    stats = train_step(hp, model, ema, optimizer, scheduler, torch.zeros(4, 3, 32, 32), progress.global_step)
    assert not stats["skipped"]
    assert float(optimizer.state[named["top_down.trainable_h"]]["step"]) == 42
