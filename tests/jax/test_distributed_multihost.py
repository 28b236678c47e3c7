"""Multi-host JAX training, with two "hosts" as two processes on this machine (issue 15).

Two `train.py` processes of one CPU device each join through jax.distributed on
127.0.0.1 (gloo CPU collectives) and train the tiny config; one process with two
forced CPU devices at the same global batch and seed is the reference. The two
must agree after the same steps (weights, validation), checkpoints must move
between the two layouts (an original-JAX checkpoint too), a stop signal to one
process must stop both, a killed process must end the other (exit 4, one
message) with a checkpoint both resume from, a frozen one must be given up on
after the timeout, and processes that see different
checkpoints (no shared folder) must refuse to start (exit 2).
"""
from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
from efficient_vdvae_jax.distributed import global_mesh, replicated_sharding
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.checkpoints import abstract_train_state
from hparams import load_config
from tests.conftest import REFERENCE_CONFIG
from tests.helpers import check, jax_env, run_training, train_command

LOST_PROCESS = "lost contact with another training process"

pytestmark = pytest.mark.slow

# Cross-process and in-process all-reduces may sum in another order: float32 rounding, no more.
RTOL, ATOL = 2e-5, 1e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_processes(overrides: list[str], cwd: Path, count: int = 2, cwds: list[Path] | None = None
                     ) -> list[subprocess.Popen]:
    """`count` train.py processes of one CPU device each, joined on 127.0.0.1, in `cwds` (default: all in
    `cwd`); stderr in cwd/stderr-<rank>."""
    address = f"127.0.0.1:{_free_port()}"
    processes = []
    for rank in range(count):
        with open(cwd / f"stderr-{rank}", "w") as stderr:  # a file: a full pipe would block the process
            processes.append(subprocess.Popen(
                train_command(overrides), cwd=cwds[rank] if cwds else cwd, stdout=subprocess.PIPE, stderr=stderr,
                text=True, env={**jax_env(1), "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(count),
                                "JAX_PROCESS_ID": str(rank)}))
    return processes


def _finish(processes: list[subprocess.Popen], cwd: Path, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    results = []
    try:
        for rank, process in enumerate(processes):
            stdout, _ = process.communicate(timeout=timeout)
            stderr = (cwd / f"stderr-{rank}").read_text()
            results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


def run_two_processes(overrides: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    results = _finish(_start_processes(overrides, cwd), cwd)
    for result in results:
        check(result)
    return results


def _restore(hp, folder: Path, checkpoint: int | None = None):
    abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), replicated_sharding(global_mesh(1)))
    checkpoints = TrainingCheckpoints(folder, max_to_keep=5)
    try:
        return checkpoints.restore(abstract, checkpoint)
    finally:
        checkpoints.close()


def _assert_states_close(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


def _validation_lines(stdout: str) -> dict[int, str]:
    """{step: the printed validation means}."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^step (\d+) \| train .*? \| (val .*)$", stdout, re.M)}


@pytest.fixture
def multihost_overrides(run_overrides):
    def _overrides(name: str, total_steps: int, *extra: str) -> list[str]:
        return run_overrides(name, f"train.total_train_steps={total_steps}",
                             "train.checkpoint_and_eval_interval_in_steps=2", "run.max_allowed_checkpoints=5",
                             *extra)
    return _overrides


def test_two_processes_equal_one_process_and_checkpoints_move_between_them(multihost_overrides, tmp_path):
    # The reference: one process, two devices, 4 steps (checkpoints after steps 1, 2 and 4).
    reference = tmp_path / "reference"
    reference.mkdir()
    single = run_training(multihost_overrides("run", 4), reference, devices=2)
    check(single)
    hp = load_config(REFERENCE_CONFIG, overrides=multihost_overrides("run", 4))
    step2, progress2 = _restore(hp, reference / "checkpoints-run", 2)
    step4, progress4 = _restore(hp, reference / "checkpoints-run", 4)
    assert progress4.global_step == 4 and progress2.global_step == 2

    # Two processes, one device each, 2 steps: the same weights, EMA, optimiser state, validation.
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    main, other = run_two_processes(multihost_overrides("run", 2), hosts)
    state, progress = _restore(hp, hosts / "checkpoints-run")
    assert progress == progress2
    _assert_states_close(state, step2)
    with pytest.raises(AssertionError):  # the comparison can fail: step 2 is not step 4
        _assert_states_close(state.params, step4.params)
    # Only process 0 prints and writes TensorBoard (one event file per writer).
    assert "step 2/2 |" in main.stdout and "step 2 | train" in main.stdout
    assert "step 2" not in other.stdout and "finished" not in other.stdout
    assert "finished at step 2" in main.stdout
    # Validation sums both processes' images (6: batches of 4 and 2 split over 2 devices).
    expected, got = _validation_lines(single.stdout), _validation_lines(main.stdout)
    assert set(expected) == {1, 2, 4} and set(got) == {1, 2}
    for step in (1, 2):
        numbers = [np.array(re.findall(r"-?\d+\.\d+", line), float) for line in (expected[step], got[step])]
        np.testing.assert_allclose(numbers[1], numbers[0], rtol=1e-3, atol=2e-4)  # printed to 4 decimals
    assert len(list((hosts / "logs-run" / "train").iterdir())) == 1
    assert len(list((hosts / "logs-run" / "val").iterdir())) == 1

    # The two processes' checkpoint resumes in one process (two devices) to the reference's step 4.
    check(run_training(multihost_overrides("run", 4), hosts, devices=2))
    resumed, progress = _restore(hp, hosts / "checkpoints-run")
    assert progress == progress4
    _assert_states_close(resumed, step4)

    # And the reverse: the reference's step-2 checkpoint resumed by two processes.
    reverse = tmp_path / "reverse"
    (reverse / "checkpoints-run").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints-run" / "2", reverse / "checkpoints-run" / "2")
    main, _ = run_two_processes(multihost_overrides("run", 4), reverse)
    assert "resuming run 'run' at step 2" in main.stdout
    resumed, progress = _restore(hp, reverse / "checkpoints-run")
    assert progress == progress4
    _assert_states_close(resumed, step4)


def test_sigterm_to_one_process_stops_both_at_the_same_step(multihost_overrides, tmp_path):
    overrides = multihost_overrides("stop", 10_000, "train.checkpoint_and_eval_interval_in_steps=100000")
    processes = _start_processes(overrides, tmp_path)
    main, other = processes
    try:
        # Wait until training runs (process 0 prints a train line per step), then signal process 1 only.
        deadline = time.monotonic() + 500
        seen = ""
        while time.monotonic() < deadline and main.poll() is None:
            line = main.stdout.readline()
            seen += line
            if line.startswith("step 3/10000 |"):
                break
        assert main.poll() is None, seen
        other.send_signal(signal.SIGTERM)
        results = _finish(processes, tmp_path)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    stdout = seen + results[0].stdout
    for result in results:
        assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    stopped = re.search(r"stopped by signal at step (\d+)", stdout)
    assert stopped, stdout[-2000:]
    hp = load_config(REFERENCE_CONFIG, overrides=overrides)
    _, progress = _restore(hp, tmp_path / "checkpoints-stop")
    assert progress.global_step == int(stopped.group(1)) > 0
    assert "SIGTERM received" in results[1].stderr


def _read_until(process: subprocess.Popen, text: str, timeout: float = 500) -> str:
    """process 0's output up to the first line starting with `text` (it prints a train line per step)."""
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        seen += line
        if line.startswith(text):
            return seen
    raise AssertionError(f"process 0 exited ({process.poll()}) or took too long before {text!r}:\n{seen[-2000:]}")


@pytest.mark.parametrize("dying", [1, 0])  # process 0 also hosts jax's coordination service
def test_a_lost_process_ends_the_run_and_both_resume(multihost_overrides, tmp_path, dying):
    """SIGKILL to one process mid-run (a host that dies): the other stops soon with the lost-process
    message and exit 4, keeping the last checkpoint; the same command on both resumes from it."""
    timeout = 60
    # Checkpoints every 4 steps, killed after step 5: the kill falls between two checkpoints.
    overrides = multihost_overrides("lost", 100_000, "train.checkpoint_and_eval_interval_in_steps=4",
                                    f"run.distributed_timeout_seconds={timeout}")
    processes = _start_processes(overrides, tmp_path)
    try:
        _read_until(processes[0], "step 5/100000 |")
        victim, survivor = processes[dying], processes[1 - dying]
        victim.kill()
        killed = time.monotonic()
        returncode = survivor.wait(timeout=timeout + 120)
        seconds = time.monotonic() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    stderr = (tmp_path / f"stderr-{1 - dying}").read_text()
    assert returncode == 4, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and LOST_PROCESS in errors[0], stderr[-3000:]
    assert f"rank {1 - dying} of 2" in errors[0]
    assert f"run.distributed_timeout_seconds = {timeout} s" in errors[0]
    hp = load_config(REFERENCE_CONFIG, overrides=overrides)
    _, progress = _restore(hp, tmp_path / "checkpoints-lost")
    step = progress.global_step
    assert step >= 4 and step % 4 == 0
    assert f"checkpoint {Path('checkpoints-lost')} (step {step}) is kept" in errors[0]
    print(f"process {1 - dying} stopped {seconds:.1f} s after process {dying} was killed (timeout {timeout} s), "
          f"checkpoint at step {step}")
    assert seconds < timeout

    main, _ = run_two_processes(multihost_overrides("lost", step + 2, "train.checkpoint_and_eval_interval_in_steps=4"),
                                tmp_path)
    assert f"resuming run 'lost' at step {step}" in main.stdout
    assert f"finished at step {step + 2}" in main.stdout
    _, progress = _restore(hp, tmp_path / "checkpoints-lost")
    assert progress.global_step == step + 2


def test_processes_that_do_not_share_the_run_folder_are_refused(multihost_overrides, tmp_path):
    """Process 0 sees a checkpoint, process 1 (another host, no shared filesystem) does not: resuming
    would train process 1 from fresh optimiser state and step 0 (and orbax restores collectively).
    Both stop with exit 2 and one message naming the checkpoint folder, before any update."""
    host0, host1, logs = tmp_path / "host0", tmp_path / "host1", tmp_path / "logs"
    for folder in (host0, host1, logs):
        folder.mkdir()
    check(run_training(multihost_overrides("unshared", 1), host0))
    results = _finish(_start_processes(multihost_overrides("unshared", 3), logs, cwds=[host0, host1]), logs)
    for result in results:
        assert result.returncode == 2, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-3000:]
        assert "do not resume from the same checkpoint" in errors[0] and "shared filesystem" in errors[0]
        assert "process 0's newest checkpoint is 1, process 1's none" in errors[0]
    hp = load_config(REFERENCE_CONFIG, overrides=multihost_overrides("unshared", 1))
    assert _restore(hp, host0 / "checkpoints-unshared")[1].global_step == 1
    assert sorted(host1.rglob("*")) == []


def test_two_processes_resume_from_an_original_jax_checkpoint(tmp_path, tmp_path_factory):
    """The original JAX code's orbax checkpoint, where its README unzips it, resumed by two processes:
    the converted state goes through host memory onto the global mesh (jax.device_put of arrays
    already on a device breaks across processes)."""
    from tests.helpers import ORIGINAL_JAX_DIR, numbered_pngs, write_random_pngs
    from tests.common.test_original_jax_checkpoint_conversion import restore_jax
    from tests.common.test_original_jax_checkpoint_resume import place_original

    if not ORIGINAL_JAX_DIR.is_dir():
        pytest.skip(f"the original-JAX fixture {ORIGINAL_JAX_DIR} is not there")
    images = tmp_path_factory.mktemp("images32")
    write_random_pngs(images, numbered_pngs(8), seed=1, size=32)
    place_original(tmp_path, "orbax")
    overrides = ["run.name=small", "run.num_cpus=1", "data.dataset_source=custom",
                 *(f"data.{split}_data_path='{images}'" for split in ("train", "val", "synthesis")),
                 "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=4", "synthesis.batch_size=4",
                 "train.total_train_steps=4"]
    main, other = run_two_processes(overrides, tmp_path)
    assert "a checkpoint of the original JAX code (step 3)" in main.stdout
    assert "finished at step 4" in main.stdout and "step 1/" not in main.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints-small").iterdir()) == ["4", "checkpoint_3"]
    state, progress = restore_jax(load_config(REFERENCE_CONFIG, overrides=overrides), tmp_path / "checkpoints-small")
    assert progress.global_step == 4 and int(state.opt_state[0].count) == 4


def test_a_process_that_stops_answering_ends_the_run_after_the_timeout(multihost_overrides, tmp_path):
    """SIGSTOP freezes process 1 with its connections open (a host that hangs or drops off the network):
    jax.distributed's coordination service misses its heartbeats for run.distributed_timeout_seconds and
    ends process 0 itself (jax's fatal message, SIGABRT: jax 0.10 offers no hook to say ours) instead of
    letting it wait for ever in the gradient all-reduce."""
    timeout = 15
    overrides = multihost_overrides("frozen", 100_000, "train.checkpoint_and_eval_interval_in_steps=4",
                                    f"run.distributed_timeout_seconds={timeout}")
    processes = _start_processes(overrides, tmp_path)
    try:
        _read_until(processes[0], "step 5/100000 |")
        processes[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        returncode = processes[0].wait(timeout=timeout + 120)
        seconds = time.monotonic() - frozen
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    stderr = (tmp_path / "stderr-0").read_text()
    assert returncode == -signal.SIGABRT, stderr[-3000:]
    assert "the JAX distributed service detected fatal errors" in stderr
    print(f"process 0 stopped {seconds:.1f} s after process 1 froze (timeout {timeout} s)")
    assert seconds < timeout + 30
