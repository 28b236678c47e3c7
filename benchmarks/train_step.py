#!/usr/bin/env python
"""Seconds per full training step (forward, loss, backward, clip/skip, optimiser, LR step, EMA) and peak memory.

Random images, one JSON line on stdout:

    python benchmarks/train_step.py --framework torch|jax [--config egs/cifar10_baseline.cfg] [--batch 4]
        [--steps 5] [--warmup 1] [--threads 2] [--set run.mixed_precision=True ...]

The first step is reported as `compile_s` (JAX: tracing and XLA compilation; PyTorch: allocation, or
torch.compile when the config asks for it) and is never among the timed steps. Warm-up is 0 in the LR
schedule and the skip threshold is huge, so every timed step applies an update. `median_cpu_s_per_step` is
the process's CPU time per step: on a machine shared with other work, compare variants by it.
"""
from __future__ import annotations

from harness import common_arguments, limit_threads, random_images, result_line, time_calls

SETTINGS_FOR_TIMING = ("optimizer.warmup_steps=0.", "optimizer.gradient_skip_threshold=1e30")


def torch_step(hp, batch: int):
    import copy

    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder
    from efficient_vdvae_torch.model.optimizers import build_optimizer
    from efficient_vdvae_torch.model.schedules import learning_rate_schedule
    from efficient_vdvae_torch.train_step import train_step

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = UniversalAutoEncoder(hp).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = build_optimizer(hp, model)
    schedule = learning_rate_schedule(hp, optimizer)
    x = torch.from_numpy(random_images(hp, batch, channels_last=False)).to(device)

    def call(step: int) -> None:
        train_step(hp, model, ema, optimizer, schedule, x, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def peak_device_gb() -> float:
        return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    return call, str(device), peak_device_gb


def jax_step(hp, batch: int):
    import jax

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.train_step import create_train_state, init_params, make_train_step

    model = UniversalAutoEncoder(hp)
    holder = {"state": create_train_state(hp, init_params(hp, model, jax.random.PRNGKey(0)))}
    step_fn = make_train_step(hp, model)
    x = jax.device_put(random_images(hp, batch, channels_last=True))

    def call(step: int) -> None:
        holder["state"], _ = step_fn(holder["state"], jax.random.PRNGKey(step), x)
        jax.block_until_ready(holder["state"])

    def peak_device_gb() -> float:
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30

    return call, jax.devices()[0].platform, peak_device_gb


def main() -> None:
    args = common_arguments(__doc__).parse_args()
    threads = limit_threads(args.threads)
    from hparams import load_config

    hp = load_config(args.config, overrides=(*SETTINGS_FOR_TIMING, *args.set))
    build = torch_step if args.framework == "torch" else jax_step
    call, device, peak_device_gb = build(hp, args.batch)
    first_s, times, cpu_times = time_calls(call, args.steps, args.warmup)
    print(result_line(args, threads, device, first_s, times, cpu_times, args.batch, peak_device_gb()), flush=True)


if __name__ == "__main__":
    main()
