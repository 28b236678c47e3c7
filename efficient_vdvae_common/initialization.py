"""`model.initializer`: which original's initialisation a model starts from (SPEC.md section 2).

The two originals initialise two kinds of tensors differently; everything else
(Glorot-uniform kernels, zero biases, the stable-init, zero-prior and
z_projection scales, zero unpool biases) is the same in both:

- 'torch', the PyTorch original: the first conv of every residual cell keeps
  torch's default init (weights and biases uniform in +-1/sqrt(fan_in)), and
  the top-down start tensor `trainable_h` is uniform in +-sqrt(3 / (C*H*W)).
- 'flax', the JAX original: that conv is Glorot uniform with zero biases, and
  `trainable_h` starts at zero.

'native' (the default) picks each framework's own original, so published
behaviour is kept: 'torch' in PyTorch, 'flax' in JAX.
"""
from __future__ import annotations

from typing import Any

KEY = "model.initializer"
SCHEMES = ("torch", "flax")
NATIVE_SCHEME = {"torch": "torch", "jax": "flax"}


def initializer_scheme(hp: Any, framework: str) -> str:
    """'torch' or 'flax': the scheme `model.initializer` means for `framework` ('torch' or 'jax')."""
    value = hp.model.initializer
    if value == "native":
        return NATIVE_SCHEME[framework]
    if value not in SCHEMES:
        raise ValueError(f"{KEY} = {value!r}: expected 'native', 'torch' or 'flax'")
    return value
