"""Original-JAX checkpoints converted into ours (both frameworks): what is carried, and one Adamax update by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from efficient_vdvae_common.parameter_layouts import flax_array_to_torch, torch_key_to_flax_path
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES
from tests.helpers import FRAMEWORKS, MSGPACK, ORBAX
from tests.jax.helpers import load_reference_config

# A large base learning rate makes the update far larger than the float32 rounding of the weights;
# the schedule (warm-up over 100 steps, at step 3) is the fixture's.
LEARNING_RATE = 1.0
UNDECAYED = ("input_conv", "output_conv", "skip_projection", "z_projection", "projection")


def cli(*args: str, overrides: tuple[str, ...] = ()) -> list[str]:
    return [*args, "--config", str(REFERENCE_CONFIG), "--set", *REFERENCE_OVERRIDES, *overrides]


def restore_torch(hp, path):
    from efficient_vdvae_torch.checkpoints import load_checkpoint, restore_training_state
    from efficient_vdvae_torch.model import UniversalAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer
    from efficient_vdvae_torch.model.schedules import learning_rate_schedule

    model, ema_model = UniversalAutoEncoder(hp), UniversalAutoEncoder(hp)
    optimizer = build_optimizer(hp, model)
    schedule = learning_rate_schedule(hp, optimizer)
    progress = restore_training_state(load_checkpoint(path), model, ema_model, optimizer, schedule)
    return model, ema_model, optimizer, progress


def restore_jax(hp, folder):
    import jax

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.checkpoints import abstract_train_state

    checkpoints = TrainingCheckpoints(folder, max_to_keep=1)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return checkpoints.restore(abstract_train_state(hp, UniversalAutoEncoder(hp), sharding))
    finally:
        checkpoints.close()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{framework: path} of the msgpack fixture converted by the CLI (torch) and the orbax one (jax)."""
    from efficient_vdvae_jax.convert_checkpoint import main

    folder = tmp_path_factory.mktemp("converted")
    paths = {"torch": folder / "checkpoints-torch", "jax": folder / "checkpoints-jax"}
    main(cli("from-original-jax", str(MSGPACK), str(paths["torch"]), "--framework", "torch"))
    main(cli("from-original-jax", str(ORBAX), str(paths["jax"]), "--framework", "jax"))
    return paths


def test_cli_states_what_starts_at_defaults(tmp_path, capsys):
    from efficient_vdvae_jax.convert_checkpoint import main

    main(cli("from-original-jax", str(MSGPACK.parent), str(tmp_path / "checkpoints-x"), "--framework", "torch"))
    out = capsys.readouterr().out
    assert "step 3" in out and "optimizer moments at update 3" in out
    assert "skip counter (0)" in out and "data position (epoch 0, batch 0)" in out


def test_torch_checkpoint_carries_weights_ema_moments_and_step(converted, original_states):
    hp = load_reference_config()
    original = original_states["msgpack"]
    model, ema_model, optimizer, progress = restore_torch(hp, converted["torch"])
    assert progress.global_step == 3 and progress.gradient_skip_count == 0
    weights, ema = original.torch_state_dict("params"), original.torch_state_dict("ema_params")
    mu, nu = original.torch_state_dict("mu"), original.torch_state_dict("nu")
    for name, parameter in model.named_parameters():
        np.testing.assert_array_equal(parameter.detach().numpy(), weights[name], err_msg=name)
        np.testing.assert_array_equal(dict(ema_model.named_parameters())[name].detach().numpy(), ema[name])
        state = optimizer.state[parameter]
        assert int(state["step"]) == 3
        np.testing.assert_array_equal(state["exp_avg"].numpy(), mu[name], err_msg=name)
        np.testing.assert_array_equal(state["exp_inf"].numpy(), nu[name], err_msg=name)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 100)  # the schedule at step 3


def test_jax_checkpoint_carries_weights_ema_moments_and_step(converted, original_states):
    import jax

    hp = load_reference_config()
    original = original_states["orbax"]
    state, progress = restore_jax(hp, converted["jax"])
    assert [p.name for p in converted["jax"].iterdir()] == ["3"]
    assert progress.global_step == int(state.step) == 3 and int(state.skipped_updates) == 0
    adam, _, schedule = state.opt_state
    assert int(adam.count) == int(schedule.count) == 3
    for tree, ours in (("params", state.params), ("ema_params", state.ema_params), ("mu", adam.mu),
                       ("nu", adam.nu)):
        flat = {tuple(k.key for k in path): np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(ours)}
        expected = getattr(original, tree)
        assert len(flat) == len(expected) == 406
        for key, value in expected.items():
            np.testing.assert_array_equal(flat[torch_key_to_flax_path(key)], value, err_msg=f"{tree} {key}")


def hand_adamax_update(hp, original, grads: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
    """The new weights (flax layout, float64) after one Adamax step from the original's state (SPEC section 6)."""
    opt = hp.optimizer
    t = original.optimizer_count + 1
    new = {}
    for key, p in original.params.items():
        p, g = p.astype(np.float64), grads[key].astype(np.float64)
        m = opt.beta1 * original.mu[key] + (1 - opt.beta1) * g
        u = np.maximum(opt.beta2 * original.nu[key], np.abs(g) + opt.epsilon)
        update = m / (1 - opt.beta1 ** t) / u
        parts = key.split(".")
        if parts[-1] == "weight" and not any(name in UNDECAYED for name in parts[:-1]):
            update = update + hp.loss.l2_weight * p
        new[key] = p - lr * update
    return new


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_update_from_the_converted_state_equals_the_update_by_hand(tmp_path, framework, original_states):
    from efficient_vdvae_jax.convert_checkpoint import main

    overrides = (f"optimizer.learning_rate={LEARNING_RATE}",)
    hp = load_reference_config(*overrides)
    original = original_states["msgpack"]
    # Gradients smaller than the moments, so that the result depends on mu and nu (not on g alone).
    rng = np.random.default_rng(0)
    grads = {key: (0.1 * value * rng.standard_normal(value.shape)).astype(np.float32)
             for key, value in original.nu.items()}
    # Cosine schedule before decay_start: lr * min(1, t / warmup_steps) at t = the applied updates.
    lr = LEARNING_RATE * min(1.0, original.schedule_count / hp.optimizer.warmup_steps)
    assert math.isclose(lr, 0.03)
    expected = hand_adamax_update(hp, original, grads, lr)

    destination = tmp_path / "checkpoints-x"
    main(cli("from-original-jax", str(MSGPACK), str(destination), "--framework", framework, overrides=overrides))
    if framework == "torch":
        import torch

        model, _, optimizer, _ = restore_torch(hp, destination)
        perm = original.output_permutation
        for name, parameter in model.named_parameters():
            parameter.grad = torch.from_numpy(flax_array_to_torch(name, grads[name], perm))
        optimizer.step()
        got = {name: p.detach().numpy() for name, p in model.named_parameters()}
        expected = {key: flax_array_to_torch(key, value, perm) for key, value in expected.items()}
    else:
        import jax
        import jax.numpy as jnp
        import optax

        from efficient_vdvae_jax.model.optimizers import build_optimizer

        state, _ = restore_jax(hp, destination)
        tree = {}
        for key, value in grads.items():
            node = tree
            for name in torch_key_to_flax_path(key)[:-1]:
                node = node.setdefault(name, {})
            node[torch_key_to_flax_path(key)[-1]] = jnp.asarray(value)
        updates, _ = build_optimizer(hp).update(tree, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        got = {".".join(_torch_parts(path)): np.asarray(leaf)
               for path, leaf in jax.tree_util.tree_leaves_with_path(new_params)}
    moved = 0.0
    for key, value in expected.items():
        before = original.params[key] if framework == "jax" else flax_array_to_torch(
            key, original.params[key], original.output_permutation)
        delta_expected, delta_got = value - before, got[key] - before
        scale = max(np.max(np.abs(delta_expected)), 1e-12)
        assert np.max(np.abs(delta_got - delta_expected)) / scale < 1e-4, key
        moved = max(moved, scale)
    assert moved > 1e-3


def _torch_parts(path) -> list[str]:
    from efficient_vdvae_common.parameter_layouts import flax_path_to_torch_key

    return flax_path_to_torch_key(tuple(k.key for k in path)).split(".")


def test_the_update_depends_on_the_carried_moments(original_states):
    """Guards the test above: with fresh moments the hand update differs clearly."""
    hp = load_reference_config(f"optimizer.learning_rate={LEARNING_RATE}")
    original = original_states["msgpack"]
    rng = np.random.default_rng(0)
    grads = {key: (0.1 * value * rng.standard_normal(value.shape)).astype(np.float32)
             for key, value in original.nu.items()}
    carried = hand_adamax_update(hp, original, grads, 0.03)
    import dataclasses

    fresh = dataclasses.replace(original, mu={k: np.zeros_like(v) for k, v in original.mu.items()},
                                nu={k: np.zeros_like(v) for k, v in original.nu.items()}, optimizer_count=0)
    other = hand_adamax_update(hp, fresh, grads, 0.03)
    key = "top_down.output_conv.weight"
    assert np.max(np.abs((carried[key] - original.params[key]) - (other[key] - original.params[key]))) > 1e-3


@pytest.mark.parametrize("direction, framework", [("to-torch", "torch"), ("to-jax", "jax")])
def test_to_torch_and_to_jax_recognise_an_original_jax_source(tmp_path, direction, framework, original_states):
    from efficient_vdvae_jax.convert_checkpoint import main

    destination = tmp_path / "checkpoints-x"
    main(cli(direction, str(MSGPACK.parent), str(destination)))
    hp = load_reference_config()
    if framework == "torch":
        model, _, _, progress = restore_torch(hp, destination)
        key, value = "top_down.output_conv.weight", dict(model.named_parameters())["top_down.output_conv.weight"]
        np.testing.assert_array_equal(value.detach().numpy(), original_states["msgpack"].torch_state_dict("params")[key])
    else:
        _, progress = restore_jax(hp, destination)
    assert progress.global_step == 3


def test_an_orbax_checkpoint_is_read_as_numpy_on_the_host():
    """Never as jax.Arrays on JAX's default device (a GPU, in a PyTorch process with jax[cuda] installed)."""
    import jax

    from efficient_vdvae_jax.original_checkpoint import restore_orbax_as_numpy

    leaves = jax.tree.leaves(restore_orbax_as_numpy(ORBAX))
    assert len(leaves) == 4 * 406 + 4 and all(type(leaf) is np.ndarray for leaf in leaves)


def test_the_pytorch_loader_keeps_jax_on_the_cpu():
    """Orbax starts JAX's backends (it asks for the process index); in a PyTorch process only the CPU one."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = ("import torch, jax; from efficient_vdvae_torch.checkpoints import load_checkpoint; "
            f"state = load_checkpoint({str(ORBAX)!r}); "
            "assert all(type(v) is torch.Tensor for v in state['model_state_dict'].values()); "
            "print('platforms', jax.config.jax_platforms)")
    env = {key: value for key, value in os.environ.items() if key != "JAX_PLATFORMS"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "platforms cpu" in result.stdout
