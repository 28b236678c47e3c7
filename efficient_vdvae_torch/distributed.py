"""Process-group set-up for data-parallel training, and the few collectives the trainer needs.

One process per device, launched by torchrun (train.sh), or a single plain
process (`python train.py`). NCCL on GPUs, gloo on CPUs. Every helper is a
no-op for a single process, so the trainer has one code path.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(timeout_seconds: float | None = None) -> DistributedContext:
    """Join the process group torchrun set up (if any) and pick this process's device.

    `timeout_seconds` (run.distributed_timeout_seconds) bounds every collective:
    a rank whose peer stopped answering (a lost node) fails after that long
    instead of waiting for ever (gloo raises; NCCL's watchdog aborts the process).
    """
    timeout = None if timeout_seconds is None else datetime.timedelta(seconds=timeout_seconds)
    use_cuda = torch.cuda.is_available()
    if not _launched_by_torchrun():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return DistributedContext(rank=0, local_rank=0, world_size=1, device=device)

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible. "
                "Launch at most one process per GPU (NUM_GPUS_PER_NODE in train.sh).")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo", timeout=timeout)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(this rank, number of ranks): (0, 1) outside torchrun."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def gather_from_ranks(item: Any) -> list[Any]:
    """Every rank's `item` (picklable), in rank order; [item] for a single process."""
    if not is_distributed():
        return [item]
    items: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def shutdown_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_ints(values: list[int], device: torch.device) -> list[list[int]]:
    """Every rank's `values` (same length on all), indexed by rank; [values] for a single process."""
    if not is_distributed():
        return [list(values)]
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [[int(v) for v in t.tolist()] for t in gathered]


# What gloo and NCCL say when another process of the group died, hung or became unreachable.
_LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                      "timed out", "gloo/transport")


def is_lost_process_error(error: BaseException) -> bool:
    """A collective failed because another rank (or its node) stopped answering: crashed, killed or lost."""
    if not is_distributed():
        return False
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _LOST_PEER_MARKERS)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a stop request)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value).item() > 0)
