#!/usr/bin/env python
"""Synthesis throughput: generation (prior samples) or reconstruction (encode, decode, evaluation loss).

Random weights and random images (throughput does not depend on what the weights are), one JSON line:

    python benchmarks/sample.py --framework torch|jax --mode generation|reconstruction
        [--config egs/cifar10_baseline.cfg] [--batch 32] [--steps 5] [--warmup 1] [--threads 2] [--set k=v ...]

`steps` batches are timed after the first (compiling) one; `images_per_s` is batch / median batch time.
"""
from __future__ import annotations

from harness import common_arguments, limit_threads, random_images, result_line, time_calls


def torch_call(hp, mode: str, batch: int):
    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = UniversalAutoEncoder(hp).to(device).eval()
    x = torch.from_numpy(random_images(hp, batch, channels_last=False)).to(device)

    @torch.inference_mode()
    def call(_: int) -> None:
        if mode == "generation":
            logits, _ = model.sample_from_prior(batch, 1.0)
        else:
            logits, posterior_stats, prior_stats = model(x)
            compute_loss(hp, x, logits, posterior_stats, prior_stats, step=None)
        model.sample_output(logits)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call, str(device)


def jax_call(hp, mode: str, batch: int):
    import jax
    import jax.numpy as jnp

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.synthesis import make_generation_step, make_reconstruction_step
    from efficient_vdvae_jax.train_step import init_params

    model = UniversalAutoEncoder(hp)
    params = init_params(hp, model, jax.random.PRNGKey(0))
    if mode == "generation":
        step = make_generation_step(hp, model, batch)
        temperatures = jnp.ones((len(hp.model.down_strides),), jnp.float32)

        def call(i: int) -> None:
            jax.block_until_ready(step(params, jax.random.PRNGKey(i), temperatures))
    else:
        step = make_reconstruction_step(hp, model)
        x = jax.device_put(random_images(hp, batch, channels_last=True))

        def call(i: int) -> None:
            jax.block_until_ready(step(params, jax.random.PRNGKey(i), x, None, 1.0))

    return call, jax.devices()[0].platform


def main() -> None:
    parser = common_arguments(__doc__)
    parser.add_argument("--mode", choices=("generation", "reconstruction"), default="generation")
    parser.set_defaults(batch=32)
    args = parser.parse_args()
    threads = limit_threads(args.threads)
    from hparams import load_config

    hp = load_config(args.config, overrides=tuple(args.set))
    build = torch_call if args.framework == "torch" else jax_call
    call, device = build(hp, args.mode, args.batch)
    first_s, times, cpu_times = time_calls(call, args.steps, args.warmup)
    print(result_line(args, threads, device, first_s, times, cpu_times, args.batch, 0.0, mode=args.mode), flush=True)


if __name__ == "__main__":
    main()
