"""Efficient-VDVAE in JAX (flax linen + optax, data parallel over devices)."""
