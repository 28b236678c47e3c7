"""Checkpoint conversion: key mapping, the MoL channel layouts, and training checkpoints both ways."""
from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from efficient_vdvae_common.training_progress import TrainingProgress
from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state
from efficient_vdvae_jax.convert_checkpoint import (flax_path_to_torch_key, main, mol_channel_permutation,
                                                    torch_key_to_flax_path, torch_state_dict_to_flax_params)
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.model.optimizers import build_optimizer as build_jax_optimizer
from efficient_vdvae_torch.checkpoints import load_checkpoint, restore_training_state, save_checkpoint, training_state
from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.schedules import learning_rate_schedule
from tests.conftest import REFERENCE_CONFIG, REPO_ROOT
from tests.jax.helpers import TINY_OVERRIDES, load_reference_config, make_forward, max_relative_error, nchw_to_nhwc

SCRIPT = REPO_ROOT / "efficient_vdvae_jax" / "convert_checkpoint.py"
PROGRESS = TrainingProgress(global_step=2, gradient_skip_count=3, data_epoch=1, data_batch=4)
SECOND_MOMENT = {"Adamax": "exp_inf", "Adam": "exp_avg_sq", "RAdam": "exp_avg_sq"}


def test_key_mapping_examples_and_inverse(reference_weights):
    assert torch_key_to_flax_path("top_down.levels_down.5.1.prior_net.0.convs.7.weight") == (
        "top_down", "levels_down_5_1", "prior_net_0", "convs_7", "kernel")
    assert torch_key_to_flax_path("top_down.levels_down_upsample.1.unpool.scale_bias") == (
        "top_down", "levels_down_upsample_1", "unpool", "scale_bias")
    for key in reference_weights:
        assert flax_path_to_torch_key(torch_key_to_flax_path(key)) == key


def test_mol_permutation_moves_torch_C_by_3M_into_3M_by_C():
    hp = load_reference_config()  # M = 10, C = 3
    m, c = 10, 3
    torch_channels = np.empty(m * (3 * c + 1), dtype=object)
    torch_channels[:m] = [("mix", k) for k in range(m)]
    for ch in range(c):
        for j in range(3 * m):
            torch_channels[m + ch * 3 * m + j] = (j, ch)  # torch: reshape (C, 3M)
    jax_channels = torch_channels[mol_channel_permutation(hp)]
    assert list(jax_channels[:m]) == [("mix", k) for k in range(m)]
    as_3m_by_c = jax_channels[m:].reshape(3 * m, c)  # jax: reshape (3M, C)
    for j in range(3 * m):
        for ch in range(c):
            assert as_3m_by_c[j, ch] == (j, ch)


def test_binarized_mnist_output_is_not_permuted():
    hp = load_reference_config("data.dataset_source='binarized_mnist'", "data.channels=1")
    assert mol_channel_permutation(hp) is None


# ---- Training checkpoints.

class TorchRun:
    """A tiny torch run after two optimiser steps on random gradients, saved by efficient_vdvae_torch/checkpoints.py."""

    def __init__(self, path, *overrides: str):
        self.overrides = TINY_OVERRIDES + overrides
        self.hp = hp = load_reference_config(*self.overrides)
        torch.manual_seed(0)
        self.model, self.ema_model = TorchAutoEncoder(hp), TorchAutoEncoder(hp)
        self.optimizer = build_optimizer(hp, self.model)
        self.lr_schedule = learning_rate_schedule(hp, self.optimizer)
        with torch.no_grad():  # EMA unlike the weights, so that swapping them would show
            for p in self.ema_model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        # Like the real model, one parameter never gets a gradient (hence no optimiser state).
        self.no_grad_name = next(iter(dict(self.model.named_parameters())))
        for _ in range(PROGRESS.global_step):
            self.take_step()
        self.path = path
        save_checkpoint(training_state(PROGRESS, self.model, self.ema_model, self.optimizer, self.lr_schedule), path)
        self.state = load_checkpoint(path)

    def random_grads(self) -> dict[str, torch.Tensor]:
        return {name: torch.randn_like(p) for name, p in self.model.named_parameters() if name != self.no_grad_name}

    def take_step(self, grads: dict[str, torch.Tensor] | None = None) -> None:
        grads = grads or self.random_grads()
        for name, p in self.model.named_parameters():
            p.grad = grads.get(name)
        self.optimizer.step()
        self.lr_schedule.step()

    def cli(self, *args: str) -> list[str]:
        return [*args, "--config", str(REFERENCE_CONFIG), "--set", "train.batch_size=4", *self.overrides]


def restore_jax(hp, folder):
    checkpoints = TrainingCheckpoints(folder, max_to_keep=1)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return checkpoints.restore(abstract_train_state(hp, UniversalAutoEncoder(hp), sharding))
    finally:
        checkpoints.close()


def flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    """{('top_down', ..., 'kernel'): array} of a nested dict of arrays."""
    return {tuple(key.key for key in path): np.asarray(value)
            for path, value in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_equal(actual, expected):
    flat_actual, flat_expected = flat(actual), flat(expected)
    assert flat_actual.keys() == flat_expected.keys()
    for path, value in flat_expected.items():
        np.testing.assert_array_equal(flat_actual[path], value, err_msg=str(path))


@pytest.fixture(scope="module")
def adamax_run(tmp_path_factory):
    """The Adamax run, converted to JAX: (run, JAX checkpoint folder)."""
    run = TorchRun(tmp_path_factory.mktemp("adamax") / "checkpoints-torch")
    folder = run.path.parent / "checkpoints-jax"
    main(run.cli("to-jax", str(run.path), str(folder)))
    return run, folder


def test_to_jax_writes_a_train_state_the_jax_trainer_restores(adamax_run):
    run, folder = adamax_run
    state, progress = restore_jax(run.hp, folder)
    assert [p.name for p in folder.iterdir()] == [str(PROGRESS.global_step + PROGRESS.gradient_skip_count)]
    assert dataclasses.asdict(progress) == dataclasses.asdict(PROGRESS)
    assert int(state.step) == 2 and int(state.skipped_updates) == 3
    assert_trees_equal(state.params, torch_state_dict_to_flax_params(run.hp, run.model.state_dict()))
    assert_trees_equal(state.ema_params, torch_state_dict_to_flax_params(run.hp, run.ema_model.state_dict()))

    adam, _, schedule = state.opt_state
    assert int(adam.count) == 2 and int(schedule.count) == 2
    parameters = dict(run.model.named_parameters())
    for moment, key in (("mu", "exp_avg"), ("nu", "exp_inf")):
        expected = {name: run.optimizer.state[p][key] if name != run.no_grad_name else torch.zeros_like(p)
                    for name, p in parameters.items()}
        assert_trees_equal(getattr(adam, moment), torch_state_dict_to_flax_params(run.hp, expected))


def test_to_torch_gives_back_the_original_checkpoint_bit_exact(adamax_run):
    run, folder = adamax_run
    back_path = folder.parent / "checkpoints-back"
    main(run.cli("to-torch", str(folder), str(back_path)))
    back, original = load_checkpoint(back_path), run.state
    for key in ("global_step", "gradient_skip_count", "data_epoch", "data_batch"):
        assert back[key] == original[key], key
    for key in ("model_state_dict", "ema_model_state_dict"):
        assert back[key].keys() == original[key].keys()
        for name, value in original[key].items():
            assert torch.equal(back[key][name], value), (key, name)
    back_opt, original_opt = back["optimizer_state_dict"], original["optimizer_state_dict"]
    assert back_opt["param_groups"] == original_opt["param_groups"]  # includes the learning rates at step 2
    for index, entries in original_opt["state"].items():
        for name, value in entries.items():
            assert torch.equal(back_opt["state"][index][name], value), (index, name)
    # The parameter torch never updated comes back with zero moments at the run's update count (optax keeps
    # one count for all), so that its first update has the bias correction of the count, as in JAX.
    (extra,) = back_opt["state"].keys() - original_opt["state"].keys()
    assert int(back_opt["state"][extra]["step"]) == PROGRESS.global_step
    assert not back_opt["state"][extra]["exp_avg"].any() and not back_opt["state"][extra]["exp_inf"].any()
    for key in ("last_epoch", "_last_lr", "base_lrs"):
        assert back["scheduler_state_dict"][key] == original["scheduler_state_dict"][key], key

    # The PyTorch trainer's loader accepts it.
    model, ema_model = TorchAutoEncoder(run.hp), TorchAutoEncoder(run.hp)
    optimizer = build_optimizer(run.hp, model)
    progress = restore_training_state(back, model, ema_model, optimizer, learning_rate_schedule(run.hp, optimizer))
    assert progress == PROGRESS


def test_a_checkpoint_of_the_original_code_converts(adamax_run, tmp_path):
    """The original saved the index of its last step and one optimiser group over model.parameters()."""
    run, _ = adamax_run
    model = copy.deepcopy(run.model)  # the fixture's model stays as saved
    original_optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        original_optimizer.step()
    original = {"global_step": 1, "model_state_dict": model.state_dict(),
                "ema_model_state_dict": run.ema_model.state_dict(),
                "optimizer_state_dict": original_optimizer.state_dict(), "scheduler_state_dict": {}}
    torch.save(original, tmp_path / "checkpoints-original")
    main(run.cli("to-jax", str(tmp_path / "checkpoints-original"), str(tmp_path / "checkpoints-jax")))
    state, progress = restore_jax(run.hp, tmp_path / "checkpoints-jax")
    assert progress == type(progress)(global_step=2) and int(state.step) == 2
    adam = state.opt_state[0]
    assert int(adam.count) == 2
    expected_u = {name: original_optimizer.state[p]["exp_inf"] for name, p in model.named_parameters()}
    assert_trees_equal(adam.nu, torch_state_dict_to_flax_params(run.hp, expected_u))
    assert_trees_equal(state.params, torch_state_dict_to_flax_params(run.hp, model.state_dict()))


@pytest.mark.parametrize("optimizer_type", ["Adamax", "Adam", "RAdam"])
def test_converted_moments_give_the_same_next_update(tmp_path, optimizer_type):
    """One more step with the same gradient in torch and in optax (weight decay on) lands on the same weights."""
    # A large learning rate: updates well above the float32 rounding of the weights.
    run = TorchRun(tmp_path / "checkpoints-torch", f"optimizer.type='{optimizer_type}'",
                   "optimizer.learning_rate=0.05", "optimizer.warmup_steps=0")
    main(run.cli("to-jax", str(run.path), str(tmp_path / "checkpoints-jax")))
    state, _ = restore_jax(run.hp, tmp_path / "checkpoints-jax")

    grads = run.random_grads()
    jax_grads = torch_state_dict_to_flax_params(run.hp, {
        name: grads.get(name, torch.zeros_like(p)) for name, p in run.model.named_parameters()})
    updates, _ = build_jax_optimizer(run.hp).update(jax.tree.map(jnp.asarray, jax_grads), state.opt_state,
                                                    state.params)
    jax_params = optax.apply_updates(state.params, updates)
    before = flat(torch_state_dict_to_flax_params(run.hp, run.model.state_dict()))
    run.take_step(grads)
    expected = flat(torch_state_dict_to_flax_params(run.hp, run.model.state_dict()))
    got = flat(jax_params)
    for path, value in expected.items():
        if path == torch_key_to_flax_path(run.no_grad_name):
            continue  # no gradient: torch leaves it alone, optax may still decay it
        assert max_relative_error(np.asarray(got[path]) - before[path], value - before[path]) < 1e-4, path


def test_jax_forward_on_the_converted_checkpoint_matches_torch(adamax_run):
    run, folder = adamax_run
    state, _ = restore_jax(run.hp, folder)
    x = torch.rand(2, run.hp.data.channels, run.hp.data.target_res, run.hp.data.target_res,
                   generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        logits, posterior, _ = run.model(x, posterior_temperature=0.0)
    zero_noise = [jnp.zeros(nchw_to_nhwc(mean).shape) for mean, _ in posterior]
    jax_logits, _, _, _ = make_forward(run.hp)(state.params, jnp.asarray(nchw_to_nhwc(x)), zero_noise, 0.0, 0)
    expected = nchw_to_nhwc(logits.numpy())[..., mol_channel_permutation(run.hp)]
    assert max_relative_error(jax_logits, expected) < 1e-4


# ---- Bad input: one line naming the culprit, exit 2.

def run_main(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_missing_source_exits_2_naming_it(tmp_path):
    missing = tmp_path / "checkpoints-nothing"
    result = subprocess.run([sys.executable, str(SCRIPT), "to-jax", str(missing), str(tmp_path / "out"),
                             "--config", str(REFERENCE_CONFIG)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_model_config_names_the_first_mismatching_parameter(adamax_run, capsys, tmp_path):
    run, _ = adamax_run
    args = ["to-jax", str(run.path), str(tmp_path / "out"), "--config", str(REFERENCE_CONFIG),
            "--set", "train.batch_size=4", *TINY_OVERRIDES, "model.num_output_mixtures=3"]
    code, err = run_main(capsys, args)
    assert code == 2  # M (3C + 1) output channels: 2 * 10 saved, 3 * 10 configured
    assert "top_down.output_conv.weight is (20, 8, 1, 1) there and (30, 8, 1, 1) in the model config" in err
    assert not (tmp_path / "out").exists()


def test_existing_destination_needs_force(adamax_run, capsys, tmp_path):
    run, folder = adamax_run
    copy = tmp_path / "checkpoints-jax"
    main(run.cli("to-jax", str(run.path), str(copy)))
    code, err = run_main(capsys, run.cli("to-jax", str(run.path), str(copy)))
    assert code == 2 and str(copy) in err and "--force" in err
    main(run.cli("to-jax", str(run.path), str(copy), "--force"))
    assert [p.name for p in copy.iterdir()] == ["5"]

    (copy / "notes.txt").write_text("mine")  # a folder that is not only checkpoints is never deleted
    code, err = run_main(capsys, run.cli("to-jax", str(run.path), str(copy), "--force"))
    assert code == 2 and "notes.txt" in err

    target = tmp_path / "checkpoints-torch"
    for unrelated in (b"", b"my notes"):  # not a checkpoint: kept, even with --force
        target.write_bytes(unrelated)
        code, err = run_main(capsys, run.cli("to-torch", str(folder), str(target), "--force"))
        assert code == 2 and str(target) in err and "not a PyTorch checkpoint" in err
        assert target.read_bytes() == unrelated
    target.write_bytes(run.path.read_bytes())
    code, err = run_main(capsys, run.cli("to-torch", str(folder), str(target)))
    assert code == 2 and str(target) in err
    code, err = run_main(capsys, run.cli("to-torch", str(folder), str(target), "--force", "--step", "7"))
    assert code == 2 and "[5]" in err
    main(run.cli("to-torch", str(folder), str(target), "--force", "--step", "5"))
    assert load_checkpoint(target)["global_step"] == PROGRESS.global_step


# ---- --force never loses both checkpoints (issue 12 item 3): SIGKILL while the new one is written.

def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _kill_when_writing(args: list[str], destination, timeout: float = 600) -> bool:
    """Run the converter; SIGKILL it as soon as its temporary destination appears. True if it was killed there."""
    import signal
    import time

    process = _start(args)
    deadline = time.monotonic() + timeout
    try:
        prefix = destination.name + ".converting-"
        while process.poll() is None and time.monotonic() < deadline:
            if any(name.startswith(prefix) for name in os.listdir(destination.parent)):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.001)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["to-jax", "to-torch"])
def test_sigkill_during_forced_replacement_keeps_the_old_checkpoint(tmp_path, direction):
    old = TorchRun(tmp_path / "checkpoints-old")  # step 2, as PROGRESS
    new_progress = dataclasses.replace(PROGRESS, global_step=7)
    new_path = tmp_path / "checkpoints-new"
    save_checkpoint(training_state(new_progress, old.model, old.ema_model, old.optimizer, old.lr_schedule), new_path)
    if direction == "to-jax":
        destination, sources = tmp_path / "checkpoints-jax", (old.path, new_path)
        main(old.cli("to-jax", str(old.path), str(destination)))
    else:  # JAX sources of both steps
        destination = tmp_path / "checkpoints-torch"
        sources = (tmp_path / "jax-old", tmp_path / "jax-new")
        main(old.cli("to-jax", str(old.path), str(sources[0])))
        main(old.cli("to-jax", str(new_path), str(sources[1])))
        main(old.cli("to-torch", str(sources[0]), str(destination)))

    def step_at_destination() -> int:
        if direction == "to-jax":
            return restore_jax(old.hp, destination)[1].global_step
        return int(load_checkpoint(destination)["global_step"])

    assert step_at_destination() == 2
    for _ in range(5):  # the write window is short: retry until the kill lands in it
        if _kill_when_writing(old.cli(direction, str(sources[1]), str(destination), "--force"), destination):
            break
        assert step_at_destination() == 7  # finished before the kill: put the old one back and retry
        main(old.cli(direction, str(sources[0]), str(destination), "--force"))
    else:
        pytest.fail("no SIGKILL landed while the converter was writing")
    assert step_at_destination() == 2  # the old checkpoint, complete
    main(old.cli(direction, str(sources[1]), str(destination), "--force"))
    assert step_at_destination() == 7
    assert not list(tmp_path.glob("*.converting-*"))  # the killed run's leftovers are gone
