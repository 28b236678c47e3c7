"""Orbax checkpoints of the JAX trainer: round trip, resume_from_ema, clear errors. No compiling needed."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from efficient_vdvae_common.training_progress import CheckpointError, TrainingProgress
from efficient_vdvae_jax.checkpoints import TrainingCheckpoints, abstract_train_state
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.distributed import global_mesh
from efficient_vdvae_jax.trainer import Trainer
from hparams import load_config
from tests.conftest import REFERENCE_CONFIG


def _random_state(hp, seed: int):
    """A train state of the config's shapes filled with random numbers (params and EMA differ)."""
    abstract = abstract_train_state(hp, UniversalAutoEncoder(hp), NamedSharding(global_mesh(1),
                                                                                PartitionSpec()))
    values = np.random.default_rng(seed)
    return jax.tree.map(lambda s: values.normal(size=s.shape).astype(s.dtype), abstract), abstract


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip_keeps_the_newest(run_overrides, tmp_path):
    hp = load_config(REFERENCE_CONFIG, overrides=run_overrides("ckpt"))
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints-ckpt", max_to_keep=2)
    assert checkpoints.latest() is None and not (tmp_path / "checkpoints-ckpt").exists()
    states = []
    for step in (1, 2, 3):
        state, abstract = _random_state(hp, seed=step)
        states.append(state)
        checkpoints.save(state, TrainingProgress(global_step=step, gradient_skip_count=1, data_epoch=2,
                                                 data_batch=step))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints-ckpt").iterdir()) == [3, 4]  # updates + skips
    restored, progress = checkpoints.restore(abstract)
    assert progress == TrainingProgress(global_step=3, gradient_skip_count=1, data_epoch=2, data_batch=3)
    assert jax.tree.structure(restored) == jax.tree.structure(states[-1])
    assert _leaves_equal(restored, states[-1])
    assert not _leaves_equal(restored, states[-2])
    checkpoints.close()


@pytest.mark.parametrize("resume_from_ema", [False, True])
def test_trainer_resumes_params_or_ema(run_overrides, tmp_path, resume_from_ema):
    hp = load_config(REFERENCE_CONFIG, overrides=run_overrides("ema", f"train.resume_from_ema={resume_from_ema}"))
    saved, _ = _random_state(hp, seed=7)
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints-ema", max_to_keep=1)
    checkpoints.save(saved, TrainingProgress(global_step=5, data_batch=1))
    checkpoints.close()

    trainer = Trainer(hp, root=tmp_path)
    assert trainer.progress == trainer.saved_progress == TrainingProgress(global_step=5, data_batch=1)
    assert _leaves_equal(trainer.state.params, saved.ema_params if resume_from_ema else saved.params)
    assert _leaves_equal(trainer.state.ema_params, saved.ema_params)
    assert _leaves_equal(trainer.state.opt_state, saved.opt_state)


def test_checkpoint_of_another_model_names_the_folder(run_overrides, tmp_path):
    small = load_config(REFERENCE_CONFIG, overrides=run_overrides("other"))
    wide = load_config(REFERENCE_CONFIG, overrides=run_overrides("other", "model.num_output_mixtures=3"))
    checkpoints = TrainingCheckpoints(tmp_path / "checkpoints-other", max_to_keep=1)
    checkpoints.save(_random_state(small, seed=1)[0], TrainingProgress(global_step=1))
    with pytest.raises(CheckpointError, match="checkpoints-other/1 does not fit the model config: "
                                              "parameter top_down/output_conv/bias is \\(20,\\) there and "
                                              "\\(30,\\) in the config"):
        checkpoints.restore(_random_state(wide, seed=1)[1])
    checkpoints.close()


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "checkpoints-torchrun").write_bytes(b"a PyTorch checkpoint")
    with pytest.raises(CheckpointError, match="checkpoints-torchrun is a file"):
        TrainingCheckpoints(tmp_path / "checkpoints-torchrun", max_to_keep=1)
