"""The optax chain against a hand-written numpy Adamax/Adam with masked decoupled weight decay (SPEC.md section 6)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficient_vdvae_jax.model.optimizers import build_optimizer, weight_decay_mask
from efficient_vdvae_jax.model.schedules import learning_rate_schedule
from tests.jax.helpers import load_reference_config

# A parameter tree with one leaf of each kind the mask must tell apart (names as in our model).
DECAYED = {("bottom_up", "levels_up_0_0", "residual_block_0", "convs_1", "kernel"),
           ("bottom_up", "levels_up_downsample_1", "pool", "ops_0", "kernel"),
           ("top_down", "levels_down_upsample_1", "unpool", "ops_0", "kernel"),
           ("top_down", "levels_down_1_0", "prior_net_0", "convs_3", "kernel")}
UNDECAYED = {("bottom_up", "input_conv", "kernel"),
             ("bottom_up", "levels_up_0_0", "residual_block_0", "convs_1", "bias"),
             ("bottom_up", "levels_up_downsample_0", "skip_projection", "kernel"),
             ("top_down", "trainable_h"),
             ("top_down", "levels_down_upsample_1", "unpool", "scale_bias"),
             ("top_down", "levels_down_1_0", "z_projection", "kernel"),
             ("top_down", "levels_down_1_0", "prior_layer", "projection", "kernel"),
             ("top_down", "levels_down_1_0", "posterior_layer", "projection", "kernel"),
             ("top_down", "output_conv", "kernel")}


def nested(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def flat_items(tree: dict, prefix=()):
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from flat_items(value, prefix + (name,))
        else:
            yield prefix + (name,), value


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return nested({path: rng.normal(size=(2, 3)).astype(np.float32) for path in DECAYED | UNDECAYED})


def test_weight_decay_mask_selects_only_inner_conv_kernels(params):
    mask = dict(flat_items(weight_decay_mask(params)))
    assert {path for path, decayed in mask.items() if decayed} == DECAYED


def numpy_reference(hp, params: dict, grads: list[dict]) -> dict:
    """SPEC.md section 6 written out by hand: Adamax (eps inside the max) or Adam, then l2 * p, then -lr."""
    opt, loss = hp.optimizer, hp.loss
    p = {k: v.astype(np.float64) for k, v in flat_items(params)}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    u = {k: np.zeros_like(v) for k, v in p.items()}
    for t, g_tree in enumerate(grads):
        g = dict(flat_items(g_tree))
        lr = hp.optimizer.learning_rate * min(1.0, t / opt.warmup_steps)  # cosine schedule before decay_start
        for k in p:
            m[k] = opt.beta1 * m[k] + (1 - opt.beta1) * g[k]
            if opt.type == "Adamax":
                u[k] = np.maximum(opt.beta2 * u[k], np.abs(g[k]) + opt.epsilon)
                update = m[k] / (1 - opt.beta1 ** (t + 1)) / u[k]
            else:
                u[k] = opt.beta2 * u[k] + (1 - opt.beta2) * g[k] ** 2
                update = (m[k] / (1 - opt.beta1 ** (t + 1))) / (np.sqrt(u[k] / (1 - opt.beta2 ** (t + 1))) + opt.epsilon)
            if loss.use_weight_decay and k in DECAYED:
                update = update + loss.l2_weight * p[k]
            p[k] = p[k] - lr * update
    return p


@pytest.mark.parametrize("optimizer_type, weight_decay", [("Adamax", True), ("Adamax", False), ("Adam", True)])
def test_optimizer_matches_hand_written_update(params, optimizer_type, weight_decay):
    hp = load_reference_config(f"optimizer.type='{optimizer_type}'", f"loss.use_weight_decay={weight_decay}",
                               "optimizer.warmup_steps=2.", "loss.l2_weight=0.5")
    rng = np.random.default_rng(1)
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(4)]
    optimizer = build_optimizer(hp)
    state = optimizer.init(params)
    current = params
    for g in grads:
        updates, state = optimizer.update(g, state, current)
        current = optax.apply_updates(current, updates)
    expected = numpy_reference(hp, params, grads)
    for path, value in flat_items(current):
        np.testing.assert_allclose(value, expected[path], rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_learning_rate_used_by_the_chain_is_the_schedule(params):
    """The chain's own step count drives the LR: update t is scaled by lr(t), t from 0."""
    hp = load_reference_config("optimizer.type='Adam'", "loss.use_weight_decay=False")
    schedule = learning_rate_schedule(hp)
    optimizer = build_optimizer(hp)
    state = optimizer.init(params)
    leaf = ("top_down", "trainable_h")
    ones = jax.tree.map(jnp.ones_like, params)
    for t in range(3):
        updates, state = optimizer.update(ones, state, params)
        # Adam with a constant gradient of 1 moves by lr (up to eps and float32 bias corrections).
        np.testing.assert_allclose(-dict(flat_items(updates))[leaf], float(schedule(t)), rtol=1e-4, atol=1e-12)


def test_weight_decay_mask_matches_the_torch_optimizer(reference_hp, reference_params):
    """The same parameters are decayed in both frameworks (torch: group 0 holds the decayed kernels)."""
    from efficient_vdvae_jax.convert_checkpoint import torch_key_to_flax_path
    from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer as build_torch_optimizer

    model = TorchAutoEncoder(reference_hp)
    names = {id(p): name for name, p in model.named_parameters()}
    torch_decayed = {torch_key_to_flax_path(names[id(p)])
                     for p in build_torch_optimizer(reference_hp, model).param_groups[0]["params"]}
    jax_decayed = {path for path, decayed in flat_items(weight_decay_mask(reference_params)) if decayed}
    assert jax_decayed == torch_decayed
    assert len(jax_decayed) > 0
