"""`model.initializer` (issue 17): every tensor's initial distribution in both frameworks and both schemes.

Each tensor's rule is written here from SPEC.md section 2 (the two originals' code),
by its torch state_dict name; JAX parameters are compared under the same names
through the checkpoint converter (which only transposes and permutes, so the
statistics are unchanged). For a uniform rule U(-b, b) the test checks the support
(|w| <= b) and the root mean square against b / sqrt(3), within 6 standard errors of
the RMS estimate (relative sd sqrt(0.2 / n) for n samples); zero rules are exact.
The pooled RMS over all tensors of one rule, each divided by its own expected std,
must be 1 within 6 pooled standard errors.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.helpers import TWO_LEVEL_MODEL

# Two small models (a JAX init compiles the whole forward pass: the reference model takes minutes).
CONFIGS = {
    # 1x1 edge convs, stable init, non-uniform widths (the reference fixture's other settings)
    "two_level_1x1": ("data.target_res=8", *TWO_LEVEL_MODEL, "model.up_filters=[8, 16]",
                      "model.up_skip_filters=[8, 16]", "model.down_filters=[16, 8]"),
    # k x k edge convs, no stable init, zero prior convs
    "two_level_kxk": ("data.target_res=8", *TWO_LEVEL_MODEL, "model.use_1x1_conv=False",
                      "model.stable_init=False", "model.initialize_prior_weights_as_zero=True"),
}


def num_groups(hp) -> int:
    return sum(hp.model.down_n_blocks_per_res) + len(hp.model.down_strides)


def glorot_bound(shape) -> float:
    fan_in, fan_out = shape[1] * shape[2] * shape[3], shape[0] * shape[2] * shape[3]
    return math.sqrt(6.0 / (fan_in + fan_out))


def expected_bound(hp, scheme: str, name: str, state: dict) -> float:
    """b of the rule U(-b, b) for tensor `name` (0: all zeros), in torch names and NCHW shapes."""
    shape = state[name].shape
    if name.endswith("trainable_h"):
        return math.sqrt(3.0 / (shape[1] * shape[2] * shape[3])) if scheme == "torch" else 0.0
    if name.endswith("scale_bias"):
        return 0.0
    cell = re.search(r"\.convs\.(\d+)\.(weight|bias)$", name)
    if cell and cell.group(1) == "1":  # first conv of a residual cell
        weight_shape = state[name[:-len(cell.group(2))] + "weight"].shape
        if scheme == "torch":  # torch defaults: kaiming_uniform(a=sqrt(5)) and its bias rule
            return 1.0 / math.sqrt(weight_shape[1] * weight_shape[2] * weight_shape[3])
        return glorot_bound(shape) if cell.group(2) == "weight" else 0.0
    if name.endswith(".bias"):
        return 0.0
    scale = 1.0
    if cell:
        prefix = name[:cell.start()]
        last = max(int(k[len(prefix) + 7:].split(".")[0]) for k in state if k.startswith(prefix + ".convs."))
        if int(cell.group(1)) == last:
            if ".prior_net." in name:
                scale = 0.0 if hp.model.initialize_prior_weights_as_zero else 1.0
            elif ".posterior_net." not in name and hp.model.stable_init:
                scale = math.sqrt(1.0 / num_groups(hp))
    elif name.endswith("z_projection.weight"):
        scale = math.sqrt(1.0 / num_groups(hp))
    return scale * glorot_bound(shape)


def initial_state(framework: str, hp, seed: int) -> dict[str, np.ndarray]:
    """A fresh model's tensors under torch names (NCHW / OIHW), computed once per config and seed."""
    key = (framework, repr(hp.to_dict()), seed)
    if key not in _STATES:
        _STATES[key] = _initial_state(framework, hp, seed)
    return _STATES[key]


_STATES: dict = {}


def _initial_state(framework: str, hp, seed: int) -> dict[str, np.ndarray]:
    if framework == "torch":
        import torch

        from efficient_vdvae_torch.model import UniversalAutoEncoder
        torch.manual_seed(seed)
        return {k: v.numpy().copy() for k, v in UniversalAutoEncoder(hp).state_dict().items()}
    import jax

    from efficient_vdvae_jax.convert_checkpoint import flax_params_to_torch_state_dict
    import jax.numpy as jnp

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    # Eager, not jitted as train_step.init_params does (same initialisers): after the first
    # model the compiled ops are cached, so each init takes seconds instead of a compile.
    x = jnp.zeros((hp.init.batch_size, hp.data.target_res, hp.data.target_res, hp.data.channels))
    params = UniversalAutoEncoder(hp).init(jax.random.PRNGKey(seed), x)["params"]
    return {k: np.asarray(v) for k, v in flax_params_to_torch_state_dict(hp, params).items()}


@pytest.fixture(scope="module", params=list(CONFIGS))
def config_name(request):
    return request.param


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("scheme", ["torch", "flax"])
def test_every_tensor_follows_its_rule(make_config, config_name, framework, scheme):
    hp = make_config(*CONFIGS[config_name], f"model.initializer='{scheme}'")
    state = initial_state(framework, hp, seed=0)
    pooled: dict[str, list[np.ndarray]] = {"uniform": []}
    for name, value in state.items():
        bound = expected_bound(hp, scheme, name, state)
        if bound == 0.0:
            assert not np.any(value), f"{name}: expected zeros"
            continue
        assert np.max(np.abs(value)) <= bound * (1 + 1e-6), f"{name}: outside U(-{bound:.4g}, {bound:.4g})"
        rms, std = float(np.sqrt(np.mean(np.square(value, dtype=np.float64)))), bound / math.sqrt(3.0)
        assert abs(rms / std - 1.0) < 6.0 * math.sqrt(0.2 / value.size), f"{name}: rms {rms:.4g}, rule {std:.4g}"
        pooled["uniform"].append((value / std).ravel())
    everything = np.concatenate(pooled["uniform"])
    assert abs(math.sqrt(np.mean(np.square(everything, dtype=np.float64))) - 1.0) < 6.0 * math.sqrt(
        0.2 / everything.size)


def test_the_schemes_differ_where_the_originals_do(make_config):
    """Under 'torch' the first cell convs have non-zero biases and trainable_h is random; under 'flax' not."""
    hp_torch = make_config(*CONFIGS["two_level_kxk"], "model.initializer='torch'")
    hp_flax = make_config(*CONFIGS["two_level_kxk"], "model.initializer='flax'")
    for framework in ("torch", "jax"):
        with_torch, with_flax = initial_state(framework, hp_torch, 0), initial_state(framework, hp_flax, 0)
        first_biases = [k for k in with_torch if k.endswith("convs.1.bias")]
        assert first_biases and all(np.any(with_torch[k]) for k in first_biases)
        assert not any(np.any(with_flax[k]) for k in first_biases)
        assert np.any(with_torch["top_down.trainable_h"]) and not np.any(with_flax["top_down.trainable_h"])


@pytest.mark.parametrize("framework, own", [("torch", "torch"), ("jax", "flax")])
def test_native_is_each_frameworks_own_original(make_config, framework, own):
    hp_native = make_config(*CONFIGS["two_level_kxk"])
    assert hp_native.model.initializer == "native"
    native = initial_state(framework, hp_native, 0)
    explicit = initial_state(framework, make_config(*CONFIGS["two_level_kxk"], f"model.initializer='{own}'"), 0)
    assert native.keys() == explicit.keys()
    for name in native:
        np.testing.assert_array_equal(native[name], explicit[name], err_msg=name)


def test_an_unknown_initializer_names_the_key(make_config):
    from hparams import ConfigError

    with pytest.raises(ConfigError, match="initializer"):
        make_config("model.initializer='lecun'")
