"""The optimiser as an optax chain (SPEC.md section 6).

scale_by_{adamax,adam,radam} -> masked decoupled weight decay -> learning rate.
optax's Adamax already is the originals' (eps inside the max, no bias
correction of the infinity moment), so no custom transformation is needed.
"""
from __future__ import annotations

from typing import Any

import optax
from flax import traverse_util

from efficient_vdvae_jax.model.schedules import learning_rate_schedule
from hparams.schema import OPTIMIZERS, unknown_choice

# Modules whose kernels are not decayed: the input/output convs, skip, z and Gaussian projections.
UNDECAYED_CONVS = ("input_conv", "output_conv", "skip_projection", "z_projection", "projection")


def weight_decay_mask(params: Any) -> Any:
    """True for the conv kernels that get weight decay; biases, `trainable_h` and `scale_bias` never do."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] == "kernel" and not any(name in UNDECAYED_CONVS for name in path[:-1])
            for path in flat}
    return traverse_util.unflatten_dict(mask)


def _scale_by_optimizer(hp: Any) -> optax.GradientTransformation:
    opt = hp.optimizer
    kind = opt.type
    if kind == "Adamax":
        return optax.scale_by_adamax(b1=opt.beta1, b2=opt.beta2, eps=opt.epsilon)
    if kind == "Adam":
        return optax.scale_by_adam(b1=opt.beta1, b2=opt.beta2, eps=opt.epsilon)
    if kind in ("RAdam", "Radam"):  # the PyTorch and the JAX original's spellings
        return optax.scale_by_radam(b1=opt.beta1, b2=opt.beta2, eps=opt.epsilon)
    raise unknown_choice("optimizer.type", kind, OPTIMIZERS)


def build_optimizer(hp: Any) -> optax.GradientTransformation:
    """The optax chain of `hp.optimizer` with `hp.loss` weight decay; its step count drives the LR."""
    transforms = [_scale_by_optimizer(hp)]
    if hp.loss.use_weight_decay:
        transforms.append(optax.add_decayed_weights(hp.loss.l2_weight, mask=weight_decay_mask))
    transforms.append(optax.scale_by_learning_rate(learning_rate_schedule(hp)))
    return optax.chain(*transforms)
