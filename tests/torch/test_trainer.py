"""The training loop in one process: exact resume, checkpoint cadence, TensorBoard output, validation means."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from efficient_vdvae_common.training_progress import TrainingProgress
from efficient_vdvae_torch.checkpoints import load_checkpoint
from efficient_vdvae_torch.data import create_dataloader
from efficient_vdvae_torch.distributed import DistributedContext
from efficient_vdvae_torch.model import UniversalAutoEncoder
from efficient_vdvae_torch.train_step import eval_step
from efficient_vdvae_torch.trainer import Trainer, validate
from tests.helpers import logged_scalars

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _train(make_config, run_overrides, root, name, *extra):
    hp = make_config(*run_overrides(name, *extra))
    return Trainer(hp, CPU, root=root).run()


def test_resume_is_exact(make_config, run_overrides, tmp_path, assert_same_tree):
    """4 steps straight == 2 steps, a new process-like Trainer, 2 more (crossing an epoch of 3 batches):
    the same checkpoint and every logged scalar (SSIM's output samples included) bit for bit."""
    every_2 = "train.checkpoint_and_eval_interval_in_steps=2"  # both runs evaluate at steps 1, 2 and 4
    straight = _train(make_config, run_overrides, tmp_path, "straight", "train.total_train_steps=4", every_2)
    _train(make_config, run_overrides, tmp_path, "resumed", "train.total_train_steps=2", every_2)
    halfway = load_checkpoint(tmp_path / "checkpoints-resumed")
    assert (halfway["global_step"], halfway["data_epoch"], halfway["data_batch"]) == (2, 0, 2)
    torch.manual_seed(123)  # the process-wide RNG of the "new process" differs: nothing may depend on it
    resumed = _train(make_config, run_overrides, tmp_path, "resumed", "train.total_train_steps=4", every_2)

    assert straight == resumed == TrainingProgress(global_step=4, data_epoch=1, data_batch=1)
    a = load_checkpoint(tmp_path / "checkpoints-straight")
    b = load_checkpoint(tmp_path / "checkpoints-resumed")
    for key in ("model_state_dict", "ema_model_state_dict", "optimizer_state_dict", "scheduler_state_dict"):
        assert_same_tree(a[key], b[key], key)
    # Training moved the weights and the EMA lags behind them.
    assert not torch.equal(a["model_state_dict"]["top_down.output_conv.weight"],
                           halfway["model_state_dict"]["top_down.output_conv.weight"])
    assert not torch.equal(a["model_state_dict"]["top_down.output_conv.weight"],
                           a["ema_model_state_dict"]["top_down.output_conv.weight"])
    straight_scalars = logged_scalars(tmp_path / "logs-straight")
    assert [step for step, _ in straight_scalars["val/Metrics/ssim"]] == [1, 2, 4]
    assert len(straight_scalars["train/Losses/nelbo"]) == 4 and len(straight_scalars) > 20
    assert logged_scalars(tmp_path / "logs-resumed") == straight_scalars


def test_finished_run_is_left_alone(make_config, run_overrides, tmp_path):
    _train(make_config, run_overrides, tmp_path, "done", "train.total_train_steps=1")
    before = (tmp_path / "checkpoints-done").stat().st_mtime_ns
    assert _train(make_config, run_overrides, tmp_path, "done", "train.total_train_steps=1").global_step == 1
    assert (tmp_path / "checkpoints-done").stat().st_mtime_ns == before


def test_tensorboard_scalars_histograms_images(make_config, run_overrides, tmp_path):
    _train(make_config, run_overrides, tmp_path, "tb", "train.total_train_steps=2",
           "train.checkpoint_and_eval_interval_in_steps=100")
    train = EventAccumulator(str(tmp_path / "logs-tb" / "train"), size_guidance={"histograms": 0, "images": 0})
    val = EventAccumulator(str(tmp_path / "logs-tb" / "val"), size_guidance={"histograms": 0, "images": 0})
    train.Reload()
    val.Reload()

    scalars = set(train.Tags()["scalars"])
    assert {"Losses/reconstruction", "Losses/kl_div", "Losses/nelbo", "Schedules/beta", "Schedules/learning_rate",
            "Stats/active_groups", "Stats/grad_norm", "Stats/gradient_skip_count", "Stats/seconds_per_step",
            "Metrics/ssim", "Latent_KL/group_00", "Latent_KL/group_09"} <= scalars
    assert [e.step for e in train.Scalars("Losses/nelbo")] == [1, 2]
    assert [e.value for e in train.Scalars("Schedules/learning_rate")] == pytest.approx([0.0, 1e-3])
    assert {"Distributions/target", "Distributions/output", "Weights/top_down.output_conv.weight"} \
        <= set(train.Tags()["histograms"])
    assert {"Images/targets", "Images/reconstructions"} <= set(train.Tags()["images"])

    assert {"Losses/nelbo", "Metrics/ssim", "Latent_KL/group_00"} <= set(val.Tags()["scalars"])
    assert {"OutputLayer/means", "OutputLayer/log_scales", "Distributions/target"} <= set(val.Tags()["histograms"])
    images = val.Images("Images/targets")
    assert [image.step for image in images] == [1, 2] and images[0].width > 16


def test_validation_at_first_and_last_step(make_config, run_overrides, tmp_path):
    """Issue 9 item 5: validation (and checkpoint) after the first update, every interval and at the end,
    never twice for one step: 5 updates with interval 2 validate at 1, 2, 4, 5."""
    _train(make_config, run_overrides, tmp_path, "points", "train.total_train_steps=5",
           "train.checkpoint_and_eval_interval_in_steps=2", "run.max_allowed_checkpoints=5")
    history = tmp_path / "checkpoints-points.history"
    assert sorted(path.name for path in history.iterdir()) == [f"global_step-{n}" for n in (1, 2, 4, 5)]
    val = EventAccumulator(str(tmp_path / "logs-points" / "val"))
    train = EventAccumulator(str(tmp_path / "logs-points" / "train"))
    val.Reload()
    train.Reload()
    for tag in ("Losses/nelbo", "Metrics/ssim", "Latent_KL/group_00"):
        assert [e.step for e in val.Scalars(tag)] == [1, 2, 4, 5], tag
    assert [e.step for e in train.Scalars("Metrics/ssim")] == [1, 2, 4, 5]
    assert load_checkpoint(tmp_path / "checkpoints-points")["global_step"] == 5


def test_validation_means_weigh_images_not_batches(make_config, run_overrides):
    """6 images in batches of 4 and 2: the mean is over images, like one batch of 6."""
    hp = make_config(*run_overrides("val"))
    model = UniversalAutoEncoder(hp)
    loader = create_dataloader(hp, "val", num_workers=0)
    assert [len(x) for x in loader] == [4, 2]

    torch.manual_seed(5)
    scalars, avg_kl, _ = validate(hp, model, loader, CPU)

    # By hand: the same batches in the same RNG order, combined with weights 4 and 2.
    torch.manual_seed(5)
    per_batch = []
    for x in loader:
        stats = eval_step(hp, model, x)
        model.sample_output(stats["logits"])  # validate draws the output samples in between
        per_batch.append((len(x), stats))
    weights = np.array([n for n, _ in per_batch], dtype=np.float64) / 6
    for key in ("recon_report", "kl_div", "nelbo"):
        assert scalars[key] == pytest.approx(sum(w * s[key] for w, (_, s) in zip(weights, per_batch)), rel=1e-6)
    expected_kl = sum(w * s["avg_kl_per_group"].double().numpy() for w, (_, s) in zip(weights, per_batch))
    np.testing.assert_allclose(avg_kl, expected_kl, rtol=1e-6)
    assert 0.0 < scalars["ssim"] < 1.0 or abs(scalars["ssim"]) < 0.2


def test_channels_last_trains_like_the_default(make_config, run_overrides, tmp_path, assert_same_tree):
    # A larger Adamax eps: near-zero gradients otherwise turn the convolutions' different
    # summation order into visible updates (see test_two_ranks_match_one_process).
    settings = ("train.total_train_steps=2", "optimizer.epsilon=1e-4")
    default = _train(make_config, run_overrides, tmp_path, "plain", *settings)
    fast = _train(make_config, run_overrides, tmp_path, "cl", *settings, "run.channels_last=True")
    assert default == fast
    assert_same_tree(load_checkpoint(tmp_path / "checkpoints-plain")["model_state_dict"],
                     load_checkpoint(tmp_path / "checkpoints-cl")["model_state_dict"], atol=1e-6)


def test_batch_not_divisible_by_ranks_names_the_key(make_config, run_overrides, tmp_path):
    from hparams import ConfigError

    hp = make_config(*run_overrides("odd", "val.batch_size=3"))
    two_ranks = DistributedContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="val.batch_size = 3 is not divisible by the 2"):
        Trainer(hp, two_ranks, root=tmp_path)


def test_train_set_smaller_than_a_batch_names_the_folder(make_config, run_overrides, tmp_path):
    from efficient_vdvae_common.data import DataError

    hp = make_config(*run_overrides("big_batch", "train.batch_size=16"))
    with pytest.raises(DataError, match="fewer images than one global batch.*train.batch_size = 16"):
        Trainer(hp, CPU, root=tmp_path)
    assert list(tmp_path.iterdir()) == []
