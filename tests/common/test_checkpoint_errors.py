"""Bad checkpoints give one line naming the file and exit 2, in both frameworks (issues 11 and 12 item 7).

Original-JAX checkpoints (truncated, empty, not a checkpoint, another architecture), and on the train
paths: another architecture, a zero-byte checkpoint, a changed optimizer type, a stray file in the PyTorch
history folder; a damaged JAX step folder falls back to the newest complete one (renamed aside by the trainer
only); the converter refuses our checkpoints as original-JAX ones; even kernels of the original JAX code.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES, REPO_ROOT
from tests.helpers import (FRAMEWORKS, JAX_TINY_MODEL, MSGPACK, ORBAX, ORIGINAL_JAX_DIR, TINY_MODEL, numbered_pngs,
                           write_random_pngs)

needs_original_jax = pytest.mark.skipif(not ORIGINAL_JAX_DIR.is_dir(), reason=f"no fixture {ORIGINAL_JAX_DIR}")
MODELS = {"torch": TINY_MODEL, "jax": JAX_TINY_MODEL}


def load(*overrides: str):
    from hparams import load_config

    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + overrides)


# ---- Original-JAX checkpoints: read by either framework's loader.

def load_with(framework: str, folder: Path, hp):
    """Load `folder` (checkpoints-<name>/ or a checkpoint_<step>) as the framework's trainer does."""
    if framework == "torch":
        from efficient_vdvae_torch.checkpoints import load_checkpoint, restore_training_state
        from efficient_vdvae_torch.model import UniversalAutoEncoder
        from efficient_vdvae_torch.model.optimizers import build_optimizer
        from efficient_vdvae_torch.model.schedules import learning_rate_schedule

        model, ema = UniversalAutoEncoder(hp), UniversalAutoEncoder(hp)
        optimizer = build_optimizer(hp, model)
        return restore_training_state(load_checkpoint(folder), model, ema, optimizer,
                                      learning_rate_schedule(hp, optimizer))
    import jax

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.checkpoints import abstract_train_state

    checkpoints = TrainingCheckpoints(folder, 1)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return checkpoints.restore(abstract_train_state(hp, UniversalAutoEncoder(hp), sharding))[1]
    finally:
        checkpoints.close()



def damaged_msgpack(kind: str, folder: Path) -> Path:
    path = folder / "checkpoints-small" / "checkpoint_3"
    path.parent.mkdir(parents=True)
    data = MSGPACK.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "foreign": b"\x80\x04hello"}[kind])
    return path


@needs_original_jax
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind, says", [("truncated", "is truncated or corrupt"), ("empty", "is empty (0 bytes)"),
                                        ("foreign", "is not a checkpoint of the original JAX code")])
def test_a_damaged_original_checkpoint_is_named(tmp_path, framework, kind, says):
    path = damaged_msgpack(kind, tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_with(framework, tmp_path / "checkpoints-small", load())
    message = str(error.value)
    assert str(path) in message and says in message and "\n" not in message


@needs_original_jax
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_partial_original_orbax_folder_is_named(tmp_path, framework):
    folder = tmp_path / "checkpoints-small" / "checkpoint_3"
    shutil.copytree(ORBAX, folder)
    os.chmod(folder, 0o755)
    for data in (folder / "d").iterdir():
        os.chmod(data, 0o644)
        data.unlink()  # the copy stopped before the arrays
    with pytest.raises(CheckpointError) as error:
        load_with(framework, tmp_path / "checkpoints-small", load())
    assert str(folder) in str(error.value) and "incomplete or corrupt" in str(error.value)


@needs_original_jax
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_original_checkpoint_of_another_architecture_names_the_first_mismatch(tmp_path, framework):
    folder = tmp_path / "checkpoints-small"
    folder.mkdir()
    shutil.copyfile(MSGPACK, folder / "checkpoint_3")
    with pytest.raises(CheckpointError) as error:
        load_with(framework, folder, load("model.num_output_mixtures=5"))
    # Original names and layout, in the original's (sorted) order: the output conv's bias comes first.
    assert "parameter top_down/output_conv/conv/bias is (100,) there and (50,) in the config" in str(error.value)
    assert str(folder / "checkpoint_3") in str(error.value)


@needs_original_jax
def test_converter_exits_2_on_a_truncated_original_checkpoint(tmp_path):
    path = damaged_msgpack("truncated", tmp_path)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "efficient_vdvae_jax" / "convert_checkpoint.py"),
                             "from-original-jax", str(path), str(tmp_path / "out"), "--framework", "torch",
                             "--config", str(REFERENCE_CONFIG)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(path) in result.stderr and "truncated" in result.stderr
    assert not (tmp_path / "out").exists()


# ---- The train paths (train.py, a real process): one line, exit 2.

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images16")
    write_random_pngs(folder, numbered_pngs(8), seed=1, size=16)
    return folder


def train(framework: str, cwd: Path, images: Path, *settings: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / f"efficient_vdvae_{framework}" / "train.py"),
               "--config", str(REFERENCE_CONFIG), "--set", *MODELS[framework], "run.name=x", "run.num_gpus=1",
               "run.num_cpus=1", "data.dataset_source=custom",
               *(f"data.{split}_data_path='{images}'" for split in ("train", "val", "synthesis")),
               "train.batch_size=4", "val.batch_size=4", "val.n_samples_for_validation=4", "train.total_train_steps=1",
               *settings]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def write_checkpoint(framework: str, folder: Path, *settings: str) -> Path:
    """A step-0 checkpoint of run 'x' (the tiny model plus `settings`) written as the trainer writes it."""
    hp = load(*MODELS[framework], *settings)
    path = folder / "checkpoints-x"
    if framework == "torch":
        from efficient_vdvae_torch.checkpoints import save_checkpoint, training_state
        from efficient_vdvae_torch.model import UniversalAutoEncoder
        from efficient_vdvae_torch.model.optimizers import build_optimizer
        from efficient_vdvae_torch.model.schedules import learning_rate_schedule

        model = UniversalAutoEncoder(hp)
        optimizer = build_optimizer(hp, model)
        save_checkpoint(training_state(TrainingProgress(), model, UniversalAutoEncoder(hp), optimizer,
                                       learning_rate_schedule(hp, optimizer)), path)
        return path
    import jax

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.train_step import create_train_state, init_params

    checkpoints = TrainingCheckpoints(path, 2, optimizer_type=hp.optimizer.type)
    try:
        state = create_train_state(hp, init_params(hp, UniversalAutoEncoder(hp), jax.random.PRNGKey(0)))
        for step in (1, 2):
            checkpoints.save(state, TrainingProgress(global_step=step))
    finally:
        checkpoints.close()
    return path


def assert_one_line_exit_2(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_refuses_a_checkpoint_of_another_architecture(tmp_path, images, framework):
    write_checkpoint(framework, tmp_path)
    result = train(framework, tmp_path, images, "model.num_output_mixtures=3")
    shapes = {"torch": "(20, 8, 1, 1) there and (30, 8, 1, 1) in the", "jax": "output_conv/bias is (20,) there and (30,) in the"}
    assert_one_line_exit_2(result, "output_conv", shapes[framework], "checkpoints-x")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_refuses_a_zero_byte_checkpoint_saying_why(tmp_path, images, framework):
    (tmp_path / "checkpoints-x").write_bytes(b"")
    result = train(framework, tmp_path, images)
    assert_one_line_exit_2(result, "checkpoints-x", "empty", "0 bytes")
    assert (tmp_path / "checkpoints-x").read_bytes() == b""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_refuses_a_changed_optimizer_type(tmp_path, images, framework):
    write_checkpoint(framework, tmp_path)  # Adamax
    result = train(framework, tmp_path, images, "optimizer.type='Adam'")
    assert_one_line_exit_2(result, "checkpoints-x", "Adamax", "'Adam'", "cannot change on resume")


def test_train_refuses_a_stray_file_in_the_history_folder(tmp_path, images):
    """PyTorch only: the JAX trainer keeps no history folder (orbax ignores foreign names in its own)."""
    write_checkpoint("torch", tmp_path)
    stray = tmp_path / "checkpoints-x.history" / "global_step-3.bak"
    stray.parent.mkdir()
    stray.write_text("mine")
    result = train("torch", tmp_path, images, "run.max_allowed_checkpoints=2")
    assert_one_line_exit_2(result, str(stray.name), "move it out")
    assert stray.read_text() == "mine"


# ---- A damaged JAX step folder: the newest complete checkpoint is restored, and it says so.

def truncate_arrays(step: Path) -> None:
    for data in (step / "state").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[:10])


def remove_state(step: Path) -> None:
    shutil.rmtree(step / "state")


def restore_jax(folder: Path, hp, move_unreadable_aside: bool):
    import jax

    from efficient_vdvae_jax.checkpoints import TrainingCheckpoints
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.checkpoints import abstract_train_state

    checkpoints = TrainingCheckpoints(folder, 2)
    try:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return checkpoints.restore(abstract_train_state(hp, UniversalAutoEncoder(hp), sharding),
                                   move_unreadable_aside=move_unreadable_aside)[1]
    finally:
        checkpoints.close()


@pytest.mark.parametrize("aside", [True, False], ids=["trainer", "read-only"])
@pytest.mark.parametrize("damage", [truncate_arrays, remove_state], ids=["corrupt", "partial"])
def test_a_damaged_jax_step_falls_back_to_the_newest_complete_one(tmp_path, capsys, damage, aside):
    path = write_checkpoint("jax", tmp_path)
    damage(path / "2")
    before = sorted(p.name for p in path.iterdir())
    assert restore_jax(path, load(*JAX_TINY_MODEL), move_unreadable_aside=aside).global_step == 1
    out = capsys.readouterr().out
    assert str(path / "2") in out and "fell back" in out
    if aside:  # the trainer: moved aside, not deleted
        assert sorted(p.name for p in path.iterdir()) == ["1", "2.unreadable"]
    else:  # synthesis, convert_checkpoint: the user's folder stays as it is
        assert "leaving the damaged one in place" in out
        assert sorted(p.name for p in path.iterdir()) == before == ["1", "2"]


def test_a_failure_that_is_not_the_files_is_raised_and_renames_nothing(tmp_path, monkeypatch):
    """Device, sharding or memory failures of orbax's restore are not a damaged step: raised as they are."""
    import orbax.checkpoint as ocp

    path = write_checkpoint("jax", tmp_path)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12345 bytes")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", out_of_memory)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        restore_jax(path, load(*JAX_TINY_MODEL), move_unreadable_aside=True)
    assert sorted(p.name for p in path.iterdir()) == ["1", "2"]


def test_synthesis_falls_back_without_renaming(tmp_path, capsys):
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.synthesis import load_synthesis_params

    path = write_checkpoint("jax", tmp_path)
    truncate_arrays(path / "2")
    hp = load(*JAX_TINY_MODEL, "run.name='x'")
    load_synthesis_params(hp, UniversalAutoEncoder(hp), tmp_path)
    out = capsys.readouterr().out
    assert "fell back" in out and "(step 1)" in out
    assert sorted(p.name for p in path.iterdir()) == ["1", "2"]


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "efficient_vdvae_jax" / "convert_checkpoint.py"), *args,
                           "--config", str(REFERENCE_CONFIG), "--set", *REFERENCE_OVERRIDES],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})


def test_to_torch_falls_back_without_renaming_and_force_replaces_a_folder_with_unreadable_steps(tmp_path):
    from efficient_vdvae_jax.convert_checkpoint import main
    from efficient_vdvae_torch.checkpoints import load_checkpoint

    path = write_checkpoint("jax", tmp_path)
    truncate_arrays(path / "2")
    settings = ("--config", str(REFERENCE_CONFIG), "--set", *REFERENCE_OVERRIDES, *JAX_TINY_MODEL)
    main(["to-torch", str(path), str(tmp_path / "checkpoints-torch"), *settings])
    assert load_checkpoint(tmp_path / "checkpoints-torch")["global_step"] == 1
    assert sorted(p.name for p in path.iterdir()) == ["1", "2"]

    # A JAX run folder as the trainer leaves it (a step moved aside) is a checkpoint --force may replace.
    os.rename(path / "2", path / "2.unreadable")
    main(["to-jax", str(tmp_path / "checkpoints-torch"), str(path), "--force", *settings])
    assert sorted(p.name for p in path.iterdir()) == ["1"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("source", ["torch", "jax"])
def test_from_original_jax_refuses_our_checkpoints_writing_nothing(tmp_path, framework, source):
    ours = write_checkpoint(source, tmp_path)
    destination = tmp_path / "out"
    result = convert("from-original-jax", str(ours), str(destination), "--framework", framework)
    assert_one_line_exit_2(result, f"{ours} is not a checkpoint of the original JAX code (use to-jax / to-torch)")
    assert not destination.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints-x"]


def test_first_shape_mismatch_reports_the_first_differing_entry():
    from efficient_vdvae_common.parameter_layouts import MISSING, first_shape_mismatch

    assert first_shape_mismatch({"a": (1, 2), "b": (3,)}, {"a": (1, 2), "b": (3,)}) is None
    assert first_shape_mismatch({"a": (1, 2), "b": (3,)}, {"b": (4,), "a": (1, 3)}) == ("a", (1, 2), (1, 3))
    assert first_shape_mismatch({"a": (1,)}, {"a": (1,), "c": (5,)}) == ("c", MISSING, (5,))
    assert first_shape_mismatch({"a": (1,), "d": (2,)}, {"a": (1,)}) == ("d", (2,), MISSING)


# ---- Original-JAX checkpoints with an even kernel: the original padded those another way.

@needs_original_jax
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_original_checkpoint_with_an_even_kernel_is_refused(tmp_path, framework):
    """The original's flax 'SAME' put the odd pixel right/bottom, ours left/top (SPEC.md section 2)."""
    import numpy as np
    from flax import serialization

    tree = serialization.msgpack_restore(MSGPACK.read_bytes())
    name = "bottom_up/input_conv/conv/kernel"
    for which in ("params", "ema_params"):
        node = tree[which]["bottom_up"]["input_conv"]["conv"]
        node["kernel"] = np.zeros((2, 2) + node["kernel"].shape[2:], np.float32)
    for state in tree["opt_state"].values():
        if isinstance(state, dict) and "mu" in state:
            for moment in ("mu", "nu"):
                node = state[moment]["bottom_up"]["input_conv"]["conv"]
                node["kernel"] = np.zeros((2, 2) + node["kernel"].shape[2:], np.float32)
    path = tmp_path / "checkpoints-small" / "checkpoint_3"
    path.parent.mkdir()
    path.write_bytes(serialization.msgpack_serialize(tree))
    with pytest.raises(CheckpointError) as error:
        load_with(framework, path.parent, load("model.input_kernel_size=(2, 2)"))
    message = str(error.value)
    assert str(path) in message and "even 2x2 kernel" in message and name in message and "'SAME'" in message
