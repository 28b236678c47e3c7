#!/usr/bin/env python
"""Time of one PyTorch training step (forward, loss, backward, optimiser) and its peak memory.

Random images at a small batch, for a few example configurations:

    python benchmarks/torch_model_step.py [--configs cifar10_baseline imagenet32_compact]
        [--batch 4] [--steps 3] [--device cuda] [--set run.mixed_precision=True ...]
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from efficient_vdvae_torch.model import UniversalAutoEncoder  # noqa: E402
from efficient_vdvae_torch.train_step import build_lr_schedule, build_optimizer, train_step  # noqa: E402
from hparams import load_config  # noqa: E402


def random_batch(hp, batch: int, device: torch.device) -> torch.Tensor:
    res, channels = hp.data.target_res, hp.data.channels
    if hp.data.dataset_source == "binarized_mnist":
        return (torch.rand(batch, 1, res, res, device=device) < 0.5).float()
    return torch.randint(0, 256, (batch, channels, res, res), device=device).float() / 127.5 - 1.0


def benchmark(name: str, batch: int, steps: int, device: torch.device, overrides: list[str]) -> str:
    # Warm-up 0 so every timed step applies an update; a huge skip threshold so none is skipped.
    hp = load_config(REPO_ROOT / "egs" / f"{name}.cfg",
                     overrides=("optimizer.warmup_steps=0.", "optimizer.gradient_skip_threshold=1e30", *overrides))
    model = UniversalAutoEncoder(hp).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = build_optimizer(hp, model)
    schedule = build_lr_schedule(hp, optimizer)
    x = random_batch(hp, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    for step in range(steps + 1):  # the first step (allocation, autotuning) is not timed
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        stats = train_step(hp, model, ema, optimizer, schedule, x, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
    params = sum(p.numel() for p in model.parameters())
    mean = sum(times[1:]) / max(steps, 1)
    return f"{name:28s} {params:>13,d} params  batch {batch}  {mean * 1000:9.1f} ms/step  peak {peak}  " \
           f"loss {stats['loss']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["quickstart", "cifar10_C1", "cifar10_baseline"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__} on {device}")
    for name in args.configs:
        print(benchmark(name, args.batch, args.steps, device, args.set), flush=True)


if __name__ == "__main__":
    main()
