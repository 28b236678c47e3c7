#!/usr/bin/env python
"""End-to-end PyTorch training throughput: data loading, train step, logging and the final checkpoint.

Builds the sample dataset in a temporary folder, trains `--warmup` steps (not
timed: start-up, first-step allocations, torch.compile), then times `--steps`
more steps of a resumed run, exactly as `python train.py` runs them.

    python benchmarks/torch_train_throughput.py [--config egs/quickstart.cfg] [--steps 50] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

from efficient_vdvae_torch.distributed import init_distributed
from efficient_vdvae_torch.trainer import Trainer
from hparams import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "egs" / "quickstart.cfg"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # The quick start reads ../datasets/shapes16/ relative to the folder training runs in.
        subprocess.run([sys.executable, str(REPO_ROOT / "data_scripts" / "make_sample_dataset.py"),
                        "--out", f"{tmp}/datasets/shapes16", "--n-train", "512"], check=True)
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        os.chdir(workdir)
        ctx = init_distributed()
        common = ("run.name=benchmark", "train.checkpoint_and_eval_interval_in_steps=1000000",
                  "train.logging_interval_in_steps=1000000", *args.overrides)
        hp = load_config(args.config, (*common, f"train.total_train_steps={args.warmup}"))
        Trainer(hp, ctx).run()
        hp = load_config(args.config, (*common, f"train.total_train_steps={args.warmup + args.steps}"))
        trainer = Trainer(hp, ctx)
        started = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - started
    images = args.steps * hp.train.batch_size
    print(f"{Path(args.config).name} on {ctx.device}, global batch {hp.train.batch_size}: "
          f"{args.steps / seconds:.2f} steps/s, {images / seconds:.1f} images/s "
          f"({seconds / args.steps * 1000:.1f} ms/step, final checkpoint included)")


if __name__ == "__main__":
    main()
