"""PyTorch data loading: `create_dataloader(hp, split, ...)` over the shared splits."""
from efficient_vdvae_torch.data.loader import ShardedEpochSampler, SplitDataset, create_dataloader

__all__ = ["ShardedEpochSampler", "SplitDataset", "create_dataloader"]
