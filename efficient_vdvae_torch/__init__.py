"""Efficient-VDVAE in PyTorch (DistributedDataParallel)."""
