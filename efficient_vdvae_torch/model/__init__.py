"""The PyTorch Efficient-VDVAE model and its objective."""
from efficient_vdvae_torch.model.autoencoder import UniversalAutoEncoder
from efficient_vdvae_torch.model.losses import compute_loss

__all__ = ["UniversalAutoEncoder", "compute_loss"]
