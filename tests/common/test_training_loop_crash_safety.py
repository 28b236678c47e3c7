"""Crash safety (issue 12, "Also"): a short run SIGKILLed at least 10 times at seeded random moments, some
while a checkpoint is being written, resumes each time from its last complete checkpoint and ends with the
parameters of an uninterrupted run, bit for bit. Both frameworks; slow (every restart is a new process; the
JAX ones share one persistent compilation cache, so only the first process compiles).
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from efficient_vdvae_common.atomic_files import temporary_files
from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"
KILLS = 10
TOTAL_STEPS = 16
RESUMING = re.compile(r"resuming run '\w+' at step (\d+) ")


def _settings(tmp_path: Path, name: str) -> list[str]:
    train, val = tmp_path / "train", tmp_path / "val"
    if not train.exists():
        write_random_pngs(train, numbered_pngs(8), seed=1)  # 2 batches per epoch: the run crosses 8 epochs
        write_random_pngs(val, numbered_pngs(4), seed=2)
    return [f"run.name={name}", "run.num_gpus=1", "run.num_cpus=1", "run.max_allowed_checkpoints=2",
            "data.dataset_source=custom", "data.target_res=16", *TWO_LEVEL_MODEL, f"data.train_data_path='{train}'",
            f"data.val_data_path='{val}'", f"data.synthesis_data_path='{val}'", "train.batch_size=4",
            "val.batch_size=4", "val.n_samples_for_validation=4", "optimizer.warmup_steps=1",
            f"train.total_train_steps={TOTAL_STEPS}", "train.checkpoint_and_eval_interval_in_steps=1"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _start(framework: str, tmp_path: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO_ROOT / framework / "train.py"), "--config", str(CONFIG),
                             "--set", *_settings(tmp_path, name)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Output:
    """The lines a process prints, collected by a thread (so that polling never blocks)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.thread.start()

    def steps(self) -> int:
        return sum(line.startswith("step ") and "s/step" in line for line in self.lines)

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "".join(self.lines)


def _temp_entries(framework: str, tmp_path: Path, name: str) -> list[Path]:
    """Half-written checkpoint files or folders (a write in progress, or cut short by a kill)."""
    if framework == "efficient_vdvae_torch":
        return temporary_files(tmp_path / f"checkpoints-{name}")  # (history entries are hard links)
    folder = tmp_path / f"checkpoints-{name}"
    return [p for p in folder.iterdir() if "tmp" in p.name] if folder.is_dir() else []


def _write_marker(framework: str, tmp_path: Path, name: str):
    """Something that changes whenever a checkpoint write starts or ends."""
    path = tmp_path / f"checkpoints-{name}"
    if framework == "efficient_vdvae_torch":
        return path.stat().st_mtime_ns if path.exists() else None
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else None


def _last_complete(framework: str, tmp_path: Path, name: str):
    """(global step, parameters as numpy) of the newest complete checkpoint, read independently of the
    trainer's resume path; (0, None) before the first one."""
    if framework == "efficient_vdvae_torch":
        from efficient_vdvae_torch.checkpoints import load_checkpoint
        state = load_checkpoint(tmp_path / f"checkpoints-{name}")
        if state is None:
            return 0, None
        return int(state["global_step"]), {key: value.numpy() for key, value in state["model_state_dict"].items()}
    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    folder = tmp_path / f"checkpoints-{name}"
    if not folder.is_dir():
        return 0, None
    checkpoints = TrainingCheckpoints(folder, max_to_keep=10)
    try:
        latest = checkpoints.latest()
        if latest is None:
            return 0, None
        import jax
        from efficient_vdvae_jax.model import UniversalAutoEncoder
        from efficient_vdvae_jax.distributed import local_mesh
        from efficient_vdvae_jax.checkpoints import abstract_train_state
        from hparams import load_config
        from jax.sharding import NamedSharding, PartitionSpec
        hp = load_config(CONFIG, overrides=_settings(tmp_path, name))
        abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), NamedSharding(local_mesh(1), PartitionSpec()))
        state, progress = checkpoints.restore(abstract, latest)
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
        return progress.global_step, {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}
    finally:
        checkpoints.close()


def _kill_at_a_random_moment(framework: str, tmp_path: Path, name: str, rng: random.Random):
    """Start the run and SIGKILL it at a moment of a seeded random kind; (killed, output, kind)."""
    kind = rng.choice(["startup", "mid-step", "write", "write"])
    delay = rng.uniform(0.0, 4.0) if kind == "startup" else rng.uniform(0.0, 0.3)
    wait_steps = rng.randint(1, 3)
    before = "wait"
    process = _start(framework, tmp_path, name)
    output = Output(process)
    started = time.monotonic()
    armed_at = None
    while process.poll() is None and time.monotonic() - started < 600:
        now = time.monotonic()
        if armed_at is None:
            if kind == "startup":
                armed_at = started
            elif kind == "mid-step" and output.steps() >= wait_steps:
                armed_at = now
            elif kind == "write" and before == "wait" and output.steps() >= wait_steps:
                before = _write_marker(framework, tmp_path, name)  # then the next write of this process
            elif kind == "write" and before != "wait" and (_temp_entries(framework, tmp_path, name)
                                                           or _write_marker(framework, tmp_path, name) != before):
                armed_at, delay = now, delay / 30  # within ~10 ms of a write starting or ending
        if armed_at is not None and now - armed_at >= delay:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True, output.text(), kind
        time.sleep(0.001)
    process.wait(timeout=600)
    return False, output.text(), kind


@pytest.mark.parametrize("framework", ["efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_sigkills_lose_nothing(framework, tmp_path):
    straight = _start(framework, tmp_path, "straight")
    straight_output = Output(straight)
    assert straight.wait(timeout=900) == 0, straight_output.text()[-3000:]
    expected_step, expected = _last_complete(framework, tmp_path, "straight")
    assert expected_step == TOTAL_STEPS

    rng = random.Random(12)
    kills, kinds, left_half_written, resumed_at = 0, [], 0, []
    previous_step = 0
    for _ in range(KILLS + 20):
        step_before, _ = _last_complete(framework, tmp_path, "crash")
        assert step_before >= previous_step, "a kill lost a complete checkpoint"
        previous_step = step_before
        killed, text, kind = _kill_at_a_random_moment(framework, tmp_path, "crash", rng)
        if match := RESUMING.search(text):
            resumed_at.append(int(match.group(1)))
            assert int(match.group(1)) == step_before, text[-3000:]  # the newest complete checkpoint
        if not killed:
            assert "Traceback" not in text, text[-3000:]
            break
        assert "Traceback" not in text, text[-3000:]
        kills += 1
        kinds.append(kind)
        left_half_written += bool(_temp_entries(framework, tmp_path, "crash"))
        if kills >= KILLS:
            break
    final = _start(framework, tmp_path, "crash")
    final_output = Output(final)
    assert final.wait(timeout=900) == 0, final_output.text()[-3000:]

    print(f"{framework}: {kills} kills ({', '.join(kinds)}), {left_half_written} left a half-written "
          f"checkpoint behind; restarts resumed at steps {resumed_at}")
    assert kills >= KILLS
    assert kinds.count("write") >= 3
    step, params = _last_complete(framework, tmp_path, "crash")
    assert step == TOTAL_STEPS
    assert params.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(params[key], expected[key], err_msg=key)
    assert not _temp_entries(framework, tmp_path, "crash")  # a restart cleans up what a kill left
