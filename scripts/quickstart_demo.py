#!/usr/bin/env python
"""The quick start, end to end, with PyTorch or JAX (`make demo`, `make demo-jax`):

    python scripts/quickstart_demo.py torch|jax

1. builds the offline shapes dataset (data_scripts/make_sample_dataset.py) unless it is there;
2. deletes an earlier `quickstart` run of that implementation, so the demo always starts from scratch;
3. trains egs/quickstart.cfg (train.py, a few minutes on 2 CPU cores);
4. reconstructs the held-out synthesis images and samples from the prior (synthesize.py);
5. prints the test NELBO next to the published results, the grids to open and the TensorBoard command;
6. with `--figure PATH`, writes the README's picture: the reconstruction grid beside one sample grid.

Every step runs the implementation's own scripts from its folder, as a user would.
On a CPU, torch and XLA get one compute thread (OMP_NUM_THREADS=1 unless already set):
on a few shared cores, spinning OpenMP threads make this small model's steps several times slower.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from efficient_vdvae_common.image_grids import GRIDS_FOLDER, write_grid  # noqa: E402

RUN_NAME = "quickstart"
CONFIG = REPO_ROOT / "egs" / "quickstart.cfg"
IMPLEMENTATIONS = {"torch": "efficient_vdvae_torch", "jax": "efficient_vdvae_jax"}
# Where egs/quickstart.cfg reads its images, and the default sizes of make_sample_dataset.py.
DATASET = REPO_ROOT / "datasets" / "shapes16"
DATASET_SPLITS = {"train_data": 4000, "val_data": 400, "synthesis_data": 64}
# Published test NELBO of the Efficient-VDVAE baselines at 32x32 (bits/dim), for scale.
PUBLISHED_32X32 = (("CIFAR-10", 2.87), ("ImageNet 32x32", 3.58))


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    return env


def _run(command: list[str], cwd: Path, what: str, capture: bool = False) -> tuple[str, float]:
    """Run one step, echoing its output; exit with its status if it fails. Returns (stdout, seconds)."""
    print(f"\n=== {what}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    if capture:
        result = subprocess.run(command, cwd=cwd, env=_environment(), stdout=subprocess.PIPE, text=True)
        sys.stdout.write(result.stdout)
    else:
        result = subprocess.run(command, cwd=cwd, env=_environment())
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(f"demo: {what} failed (exit {result.returncode})", file=sys.stderr)
        sys.exit(result.returncode)
    return (result.stdout or "", seconds)


def _dataset_complete() -> bool:
    """The shapes set of make_sample_dataset.py's defaults is in place (it is deterministic)."""
    return all(len(list((DATASET / folder).glob("*.png"))) == count for folder, count in DATASET_SPLITS.items())


def _nelbo_line(reconstruction_output: str) -> str:
    lines = [line for line in reconstruction_output.splitlines() if line.startswith("NELBO ")]
    return lines[-1] if lines else "(no NELBO line in the reconstruction output)"


FIGURE_GAP = 8  # white pixels between the two grids of the figure
FIGURE_SCALE = 3  # the grids' pixels are repeated so: 16x16 tiles are too small to see on a page
FIGURE_TEMPERATURE = "0.9"  # the sample grid of the figure (a temperature_settings entry of egs/quickstart.cfg)


def demo_figure(grids: list[Path], out: Path, scale: int = FIGURE_SCALE) -> Path:
    """Place grids side by side (tops aligned, white gap and fill), each pixel repeated `scale` times."""
    images = [np.asarray(Image.open(grid).convert("RGB")) for grid in grids]
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + FIGURE_GAP * (len(images) - 1)
    figure = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for image in images:
        figure[:image.shape[0], left:left + image.shape[1]] = image
        left += image.shape[1] + FIGURE_GAP
    return write_grid(out, figure.repeat(scale, axis=0).repeat(scale, axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", choices=tuple(IMPLEMENTATIONS))
    parser.add_argument("--figure", type=Path, default=None,
                        help="also write the README's picture here (reconstructions beside samples at "
                             f"T={FIGURE_TEMPERATURE})")
    args = parser.parse_args(argv)
    folder = REPO_ROOT / IMPLEMENTATIONS[args.framework]
    python = sys.executable
    config = os.path.relpath(CONFIG, folder)

    if _dataset_complete():
        print(f"=== dataset: {DATASET.relative_to(REPO_ROOT)} is there (delete it to draw it again)", flush=True)
    else:
        _run([python, str(REPO_ROOT / "data_scripts" / "make_sample_dataset.py"), "--out", str(DATASET)],
             REPO_ROOT, "dataset")
    if (folder / f"logs-{RUN_NAME}").exists() or (folder / f"checkpoints-{RUN_NAME}").exists():
        _run(["sh", "reset.sh", RUN_NAME], folder, "reset the previous demo run")
    _, train_seconds = _run([python, "train.py", "--config", config], folder, "training")
    reconstruction, reconstruction_seconds = _run(
        [python, "synthesize.py", "--config", config, "--set", "synthesis.synthesis_mode=reconstruction",
         "synthesis.save_target_in_reconstruction=True"], folder, "reconstruction", capture=True)
    _, generation_seconds = _run([python, "synthesize.py", "--config", config, "--set",
                                  "synthesis.synthesis_mode=generation"], folder, "generation")

    logs = folder / f"logs-{RUN_NAME}"
    grids = sorted((logs / "synthesis-images" / GRIDS_FOLDER).glob("*.png"))
    published = ", ".join(f"{name} {value} bits/dim" for name, value in PUBLISHED_32X32)
    print(f"\n=== quick start ({args.framework}) done: training {train_seconds:.0f} s, reconstruction "
          f"{reconstruction_seconds:.0f} s, generation {generation_seconds:.0f} s")
    print(f"Test NELBO on the {RUN_NAME} synthesis set (bits/dim): {_nelbo_line(reconstruction)}")
    print(f"For scale, the published full-size models at 32x32: {published} (days on GPUs, natural images;"
          f" the demo's shapes on plain backgrounds are far simpler, so the numbers are not comparable).")
    print("Grids (targets above reconstructions; one sample grid per temperature setting):")
    for grid in grids:
        print(f"  {grid.relative_to(REPO_ROOT)}")
    print(f"Per-image files: {(logs / 'synthesis-images').relative_to(REPO_ROOT)}/")
    print(f"Training curves: tensorboard --logdir {logs.relative_to(REPO_ROOT)}")
    if args.figure is not None:
        samples = [grid for grid in grids
                   if grid.name.startswith("generation-") and f"_T-{FIGURE_TEMPERATURE}." in grid.name]
        reconstructions = logs / "synthesis-images" / GRIDS_FOLDER / "reconstruction.png"
        print(f"Figure: {demo_figure([reconstructions, *samples[:1]], args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
