#!/usr/bin/env python
"""Compile time and time of one jitted JAX training step (forward, loss, gradients, optimiser, EMA).

Random images at a small batch, for a few example configurations, on JAX's default backend:

    python benchmarks/jax_model_step.py [--configs cifar10_baseline imagenet32_compact]
        [--batch 4] [--steps 3] [--set run.mixed_precision=True ...]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from efficient_vdvae_jax.model import UniversalAutoEncoder  # noqa: E402
from efficient_vdvae_jax.train_step import create_train_state, init_params, make_train_step  # noqa: E402
from hparams import load_config  # noqa: E402


def random_batch(hp, batch: int) -> np.ndarray:
    res, channels = hp.data.target_res, hp.data.channels
    rng = np.random.default_rng(0)
    if hp.data.dataset_source == "binarized_mnist":
        return (rng.uniform(size=(batch, res, res, 1)) < 0.5).astype(np.float32)
    return (rng.integers(0, 256, size=(batch, res, res, channels)) / 127.5 - 1.0).astype(np.float32)


def benchmark(name: str, batch: int, steps: int, overrides: list[str]) -> str:
    # Warm-up 0 so every timed step applies an update; a huge skip threshold so none is skipped.
    hp = load_config(REPO_ROOT / "egs" / f"{name}.cfg",
                     overrides=("optimizer.warmup_steps=0.", "optimizer.gradient_skip_threshold=1e30", *overrides))
    model = UniversalAutoEncoder(hp)
    state = create_train_state(hp, init_params(hp, model, jax.random.PRNGKey(0)))
    train_step = make_train_step(hp, model)
    x = jax.device_put(random_batch(hp, batch))

    started = time.perf_counter()
    state, stats = train_step(state, jax.random.PRNGKey(1), x)  # compiles
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - started
    times = []
    for step in range(steps):
        started = time.perf_counter()
        state, stats = train_step(state, jax.random.PRNGKey(step + 2), x)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - started)
    device = jax.devices()[0]
    memory = device.memory_stats() if device.platform != "cpu" else None
    if memory and "peak_bytes_in_use" in memory:
        peak = f"{memory['peak_bytes_in_use'] / 2**30:.2f} GiB ({device.platform})"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
    params = sum(np.size(p) for p in jax.tree.leaves(state.params))
    mean = sum(times) / max(steps, 1)
    return f"{name:28s} {params:>13,d} params  batch {batch}  compile {compile_s:6.1f} s  " \
           f"{mean * 1000:9.1f} ms/step  peak {peak}  loss {float(stats['loss']):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["quickstart", "cifar10_C1", "cifar10_baseline"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} devices)")
    for name in args.configs:
        print(benchmark(name, args.batch, args.steps, args.set), flush=True)


if __name__ == "__main__":
    main()
