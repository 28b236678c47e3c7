"""Helpers shared by the test folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
from PIL import Image

FRAMEWORKS = ("torch", "jax")
# End-to-end tests that run over both frameworks: each JAX case compiles its own programs (20-40 s on 2
# cores), so those cases run with the slow suite and the PyTorch case keeps the check in the default one.
FRAMEWORKS_JAX_SLOW = ["torch", pytest.param("jax", marks=pytest.mark.slow)]

# A 16x16 model of ~11k parameters: tests run real steps on 2 shared CPU cores.
TINY_MODEL = (
    "data.target_res=16",
    "model.input_conv_filters=8",
    "model.up_strides=[1, 2, 1, 2, 1, 2, 1]",
    "model.down_strides=[1, 2, 1, 2, 1, 2, 1]",
    "model.up_filters=[8] * 7",
    "model.up_skip_filters=[8] * 7",
    "model.down_filters=[8] * 7",
    "model.down_latent_variates=[4] * 7",
    "model.num_output_mixtures=2",
)


# Two levels, three latent groups, 8 channels: the smallest model whose jitted
# gradients (JAX) compile in seconds. Add a data.target_res divisible by 4.
TWO_LEVEL_MODEL = (
    "model.input_conv_filters=8",
    "model.up_strides=[2, 2]",
    "model.up_n_blocks_per_res=[1, 0]",
    "model.up_n_blocks=[1, 1]",
    "model.up_n_layers=[1, 1]",
    "model.up_filters=[8, 8]",
    "model.up_mid_filters_ratio=[0.5, 0.5]",
    "model.up_kernel_size=[3, 3]",
    "model.up_skip_filters=[8, 8]",
    "model.down_strides=[2, 2]",
    "model.down_n_blocks_per_res=[1, 0]",
    "model.down_n_blocks=[1, 1]",
    "model.down_n_layers=[1, 1]",
    "model.down_filters=[8, 8]",
    "model.down_mid_filters_ratio=[0.5, 0.5]",
    "model.down_kernel_size=[3, 3]",
    "model.down_latent_variates=[4, 4]",
    "model.num_output_mixtures=2",
)

# The JAX end-to-end tests' model: levels at 8x8 (one follower) and 16x16, three latent groups of 4 variates.
# Their runs are subprocesses (the device count is fixed when JAX starts, and a fresh process is what users
# run); compiling is most of their cost on a small CPU.
JAX_TINY_MODEL = ("data.target_res=16",) + TWO_LEVEL_MODEL
JAX_TRAIN_PY = Path(__file__).resolve().parent.parent / "efficient_vdvae_jax" / "train.py"
REFERENCE_CONFIG = Path(__file__).resolve().parent / "fixtures" / "original_torch_small" / "config.cfg"

# The fixture written by the original JAX code; CI puts a copy of shared/ beside the clone (<repo>/../shared),
# as on the development machine.
ORIGINAL_JAX_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "original_jax_small"
MSGPACK = ORIGINAL_JAX_DIR / "checkpoints_msgpack" / "checkpoint_3"
ORBAX = ORIGINAL_JAX_DIR / "checkpoints_orbax" / "checkpoint_3"
FORMATS = {"msgpack": MSGPACK, "orbax": ORBAX}
NUM_GROUPS = 10


def train_command(overrides: list[str]) -> list[str]:
    """The JAX train.py on the reference config with `overrides`."""
    return [sys.executable, str(JAX_TRAIN_PY), "--config", str(REFERENCE_CONFIG), "--set", *overrides]


def jax_env(devices: int = 1) -> dict[str, str]:
    """The environment of a CPU-only JAX process with `devices` host devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_training(overrides: list[str], cwd: Path, devices: int = 1, timeout: int = 600
                 ) -> subprocess.CompletedProcess:
    """The JAX train.py in a fresh process."""
    return subprocess.run(train_command(overrides), cwd=cwd, env=jax_env(devices), capture_output=True, text=True,
                          timeout=timeout)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def write_random_pngs(folder: Path, names: Iterable[str], seed: int, size: int = 16) -> None:
    """Seeded random RGB PNGs `folder/<name>` (names may hold subfolders)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)


def numbered_pngs(count: int, prefix: str = "img_") -> list[str]:
    return [f"{prefix}{index:03d}.png" for index in range(count)]


# Wall-clock scalars: the only logged values that may differ between two runs of the same steps.
TIMING_SCALARS = ("Stats/seconds_per_step",)


def event_records(path: Path) -> Iterable[bytes]:
    """The serialized events of one TensorBoard event file (TFRecord framing: length, its CRC, data,
    its CRC), read without TensorFlow; a truncated last record (a killed writer) ends the file."""
    data = Path(path).read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset:offset + 8], "little")
        end = offset + 12 + length + 4
        if end > len(data):
            return
        yield data[offset + 12:offset + 12 + length]
        offset = end


def logged_scalars(logs: Path, skip: Iterable[str] = TIMING_SCALARS) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard event files (all files of logs/train and logs/val, so every
    process of a resumed run), as {"mode/tag": [(step, value), ...] sorted}; a step logged twice
    appears twice."""
    from tensorboard.compat.proto import event_pb2

    skip = set(skip)
    scalars: dict[str, list[tuple[int, float]]] = {}
    for mode in ("train", "val"):
        for path in sorted((Path(logs) / mode).glob("events.out.tfevents.*")):
            for record in event_records(path):
                event = event_pb2.Event.FromString(record)
                for value in event.summary.value:
                    if value.WhichOneof("value") == "simple_value" and value.tag not in skip:
                        scalars.setdefault(f"{mode}/{value.tag}", []).append((event.step, value.simple_value))
    return {tag: sorted(values) for tag, values in scalars.items()}
