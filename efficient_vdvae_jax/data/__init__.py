"""JAX data loading: `create_iterator(hp, split, num_devices=...)` over the shared splits."""
from efficient_vdvae_jax.data.iterator import create_iterator

__all__ = ["create_iterator"]
