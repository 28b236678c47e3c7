"""The Efficient-VDVAE model and objective in flax (NHWC)."""
from efficient_vdvae_jax.model.autoencoder import UniversalAutoEncoder
from efficient_vdvae_jax.model.losses import compute_loss

__all__ = ["UniversalAutoEncoder", "compute_loss"]
