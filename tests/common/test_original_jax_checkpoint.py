"""The original JAX code's checkpoints read in both formats, mapped onto our names, and evaluated by our models.

expected.json holds the original JAX model's losses for the checkpoint's `params` and `ema_params` on
batch.npz, with the stored posterior noise and with zero noise (z = posterior mean).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from efficient_vdvae_common.parameter_layouts import flax_shape, torch_key_to_flax_path
from tests.helpers import FORMATS, NUM_GROUPS, ORIGINAL_JAX_DIR
from tests.jax.helpers import load_reference_config

SCALAR_RTOL = 1e-5
KL_ATOL = 1e-9  # the smallest groups' KL (~2e-7) sits near float32 resolution
WEIGHTS = ("params", "ema_params")
NOISE_MODES = ("sampled_noise", "zero_noise")


@pytest.fixture(scope="module")
def hp():
    """The fixture's model (its hparams.cfg is the reference config with batch sizes 4)."""
    return load_reference_config()


def test_both_formats_hold_the_same_state(original_states):
    msgpack, orbax = original_states["msgpack"], original_states["orbax"]
    assert msgpack.step == orbax.step == 3
    assert msgpack.optimizer_count == orbax.optimizer_count == msgpack.schedule_count == orbax.schedule_count == 3
    assert msgpack.ema_decay == orbax.ema_decay == pytest.approx(0.9999)
    for tree in ("params", "ema_params", "mu", "nu"):
        a, b = getattr(msgpack, tree), getattr(orbax, tree)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{tree} {key}")
    # Three updates moved the weights, their EMA barely: both are really there, and differ.
    key = "top_down.output_conv.weight"
    assert not np.array_equal(msgpack.params[key], msgpack.ema_params[key])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_leaf_of_param_tree_maps_onto_our_models(original_states, hp, fmt):
    """Each of the 406 leaves lands on one of our PyTorch keys, with our flax shape; none is left over."""
    import jax
    import jax.numpy as jnp

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder

    leaves = json.loads((ORIGINAL_JAX_DIR / "param_tree.json").read_text())
    state = original_states[fmt]
    torch_shapes = {key: tuple(value.shape) for key, value in TorchAutoEncoder(hp).state_dict().items()}
    jax_shapes = {"/".join(key.key for key in path): tuple(leaf.shape) for path, leaf in
                  jax.tree_util.tree_leaves_with_path(jax.eval_shape(
                      UniversalAutoEncoder(hp).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])}
    assert len(leaves) == len(state.params) == len(torch_shapes) == len(jax_shapes) == 406
    for leaf in leaves:
        key = next(k for k, original in state.original_names.items() if original == leaf["path"])
        assert tuple(state.params[key].shape) == tuple(leaf["shape"]) == flax_shape(key, torch_shapes[key])
        assert jax_shapes["/".join(torch_key_to_flax_path(key))] == tuple(leaf["shape"]), leaf["path"]
    assert {state.original_names[key] for key in torch_shapes} == {leaf["path"] for leaf in leaves}
    torch_layout = state.torch_state_dict("params")
    assert {key: tuple(value.shape) for key, value in torch_layout.items()} == torch_shapes


def test_name_mapping_examples():
    from efficient_vdvae_common.original_jax_checkpoint import original_path_to_torch_key as rename

    assert rename("bottom_up/input_conv/conv/kernel") == "bottom_up.input_conv.weight"
    assert rename("bottom_up/block_up_level_3_downsample/pooling_layer/conv/conv/kernel") == \
        "bottom_up.levels_up_downsample.3.pool.ops.0.weight"
    assert rename("top_down/block_down_level_1_upsample/unpooling_layer/scale_bias") == \
        "top_down.levels_down_upsample.1.unpool.scale_bias"
    assert rename("top_down/block_down_level_5_1/residual_block_0/conv_2/conv/kernel") == \
        "top_down.levels_down.5.1.residual_block.0.convs.5.weight"
    assert rename("top_down/block_down_level_2_0/prior_net/conv_3/conv/bias") == \
        "top_down.levels_down.2.0.prior_net.0.convs.7.bias"
    assert rename("top_down/block_down_level_0_upsample/posterior_gaussian_layer/projection/conv/kernel") == \
        "top_down.levels_down_upsample.0.posterior_layer.projection.weight"
    assert rename("top_down/block_down_level_0_upsample/z_projection/z_projection/conv/bias") == \
        "top_down.levels_down_upsample.0.z_projection.bias"
    assert rename("top_down/output_conv/conv/kernel") == "top_down.output_conv.weight"
    assert rename("top_down/trainable_h") == "top_down.trainable_h"


# ---- Our models on the converted weights reproduce the original JAX model's losses.

@pytest.fixture(scope="module")
def jax_forward(hp):
    from tests.jax.helpers import make_forward

    return make_forward(hp)


def evaluate(framework, hp, state, which, batch, noise_mode, step, jax_forward):
    """(recon nats/dim, KL per group nats/dim, total loss) of our `framework` model on the converted weights."""
    noise = [batch[f"eps_{g:02d}"] for g in range(NUM_GROUPS)]
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        params = jax.tree.map(jnp.asarray, state.flax_tree(which))
        eps = [jnp.asarray(n) if noise_mode == "sampled_noise" else jnp.zeros(n.shape) for n in noise]
        out = jax_forward(params, jnp.asarray(batch["input_nhwc"]), eps, 1.0 if noise_mode == "sampled_noise"
                          else 0.0, step)[3]
        return float(out.recon_loss), np.asarray(out.kl_per_group, np.float64), float(out.loss)
    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss

    model = UniversalAutoEncoder(hp)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.torch_state_dict(which).items()}, strict=True)
    model.eval()
    x = torch.from_numpy(batch["input"])
    kwargs = ({"noise": [torch.from_numpy(n.transpose(0, 3, 1, 2).copy()) for n in noise]}
              if noise_mode == "sampled_noise" else {"posterior_temperature": 0.0})
    with torch.no_grad():
        logits, posterior, prior = model(x, **kwargs)
        out = compute_loss(hp, x, logits, posterior, prior, step=step)
    return out.recon_loss.item(), out.kl_per_group.double().numpy(), out.loss.item()


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("which", WEIGHTS)
@pytest.mark.parametrize("noise_mode", NOISE_MODES)
def test_our_models_reproduce_the_original_losses(framework, which, noise_mode, hp, original_states,
                                                  original_batch, original_expected, jax_forward):
    expected = original_expected["weights"][which][noise_mode]
    state = original_states["msgpack"]
    recon, kl, loss = evaluate(framework, hp, state, which, original_batch, noise_mode, state.step, jax_forward)
    assert recon == pytest.approx(expected["recon_loss_nats_per_dim"], rel=SCALAR_RTOL)
    np.testing.assert_allclose(kl, expected["kl_per_layer_nats_per_dim"], rtol=SCALAR_RTOL, atol=KL_ATOL)
    assert loss == pytest.approx(expected["total_loss(step_n)"], rel=SCALAR_RTOL)


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("step", ["0", "4000", "1000000000"])
def test_total_loss_at_other_steps(framework, step, hp, original_states, original_batch, original_expected,
                                   jax_forward):
    """Steps where the KL warm-up (beta) and gamma balancing weigh the KL differently."""
    state = original_states["orbax"]
    for which in WEIGHTS:
        for noise_mode in NOISE_MODES:
            expected = original_expected["weights"][which][noise_mode]["at_other_steps"][step]
            _, _, loss = evaluate(framework, hp, state, which, original_batch, noise_mode, int(step), jax_forward)
            assert loss == pytest.approx(expected["total_loss(step_n)"], rel=SCALAR_RTOL), (which, noise_mode)
