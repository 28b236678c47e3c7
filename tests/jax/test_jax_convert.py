"""Checkpoint conversion: key mapping, the MoL channel layouts, and files both ways."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from efficient_vdvae_jax.convert_checkpoint import (flax_path_to_torch_key, jax_checkpoint_to_torch,
                                                    load_jax_checkpoint, main, mol_channel_permutation,
                                                    save_jax_checkpoint, torch_key_to_flax_path,
                                                    torch_state_dict_to_flax_params)
from efficient_vdvae_torch.checkpoints import (TrainingProgress, load_checkpoint, restore_training_state,
                                               save_checkpoint, training_state)
from efficient_vdvae_torch.model import UniversalAutoEncoder as TorchAutoEncoder
from efficient_vdvae_torch.model.optimizers import build_optimizer
from efficient_vdvae_torch.model.schedules import build_lr_schedule
from tests.conftest import REFERENCE_CONFIG
from tests.jax.helpers import TINY_OVERRIDES, load_reference_config


def test_key_mapping_examples_and_inverse(reference_weights):
    assert torch_key_to_flax_path("top_down.levels_down.5.1.prior_net.0.convs.7.weight") == (
        "top_down", "levels_down_5_1", "prior_net_0", "convs_7", "kernel")
    assert torch_key_to_flax_path("top_down.levels_down_upsample.1.unpool.scale_bias") == (
        "top_down", "levels_down_upsample_1", "unpool", "scale_bias")
    for key in reference_weights:
        assert flax_path_to_torch_key(torch_key_to_flax_path(key)) == key


def test_mol_permutation_moves_torch_C_by_3M_into_3M_by_C():
    hp = load_reference_config()  # M = 10, C = 3
    m, c = 10, 3
    torch_channels = np.empty(m * (3 * c + 1), dtype=object)
    torch_channels[:m] = [("mix", k) for k in range(m)]
    for ch in range(c):
        for j in range(3 * m):
            torch_channels[m + ch * 3 * m + j] = (j, ch)  # torch: reshape (C, 3M)
    jax_channels = torch_channels[mol_channel_permutation(hp)]
    assert list(jax_channels[:m]) == [("mix", k) for k in range(m)]
    as_3m_by_c = jax_channels[m:].reshape(3 * m, c)  # jax: reshape (3M, C)
    for j in range(3 * m):
        for ch in range(c):
            assert as_3m_by_c[j, ch] == (j, ch)


def test_binarized_mnist_output_is_not_permuted():
    hp = load_reference_config("data.dataset_source='binarized_mnist'", "data.channels=1")
    assert mol_channel_permutation(hp) is None


def test_jax_checkpoint_file_round_trip(tmp_path, reference_hp, reference_weights):
    params = torch_state_dict_to_flax_params(reference_hp, reference_weights)
    ema = {"top_down": {"trainable_h": np.ones((1, 2, 2, 32), np.float32)}}
    save_jax_checkpoint(tmp_path / "ckpt.npz", params, ema, step=7, skipped_updates=2)
    loaded = load_jax_checkpoint(tmp_path / "ckpt.npz")
    assert loaded["step"] == 7 and loaded["skipped_updates"] == 2
    np.testing.assert_array_equal(loaded["ema_params"]["top_down"]["trainable_h"], ema["top_down"]["trainable_h"])
    np.testing.assert_array_equal(loaded["params"]["top_down"]["output_conv"]["kernel"],
                                  params["top_down"]["output_conv"]["kernel"])


def test_unreadable_jax_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.npz"):
        load_jax_checkpoint(bad)


def test_torch_checkpoint_to_jax_and_back_via_the_cli(tmp_path):
    overrides = TINY_OVERRIDES
    hp = load_reference_config(*overrides)
    torch.manual_seed(0)
    model, ema_model = TorchAutoEncoder(hp), TorchAutoEncoder(hp)
    optimizer = build_optimizer(hp, model)
    scheduler = build_lr_schedule(hp, optimizer)
    progress = TrainingProgress(global_step=150, gradient_skip_count=3)
    save_checkpoint(training_state(progress, model, ema_model, optimizer, scheduler), tmp_path / "checkpoints-a")

    cli = ["--config", str(REFERENCE_CONFIG), "--set", *("train.batch_size=4",) + overrides]
    main(["to-jax", str(tmp_path / "checkpoints-a"), str(tmp_path / "jax.npz")] + cli)
    converted = load_jax_checkpoint(tmp_path / "jax.npz")
    assert converted["step"] == 150 and converted["skipped_updates"] == 3
    expected_ema = torch_state_dict_to_flax_params(hp, ema_model.state_dict())
    np.testing.assert_array_equal(converted["ema_params"]["top_down"]["output_conv"]["kernel"],
                                  expected_ema["top_down"]["output_conv"]["kernel"])

    main(["to-torch", str(tmp_path / "jax.npz"), str(tmp_path / "checkpoints-b")] + cli)
    restored, restored_ema = TorchAutoEncoder(hp), TorchAutoEncoder(hp)
    new_optimizer = build_optimizer(hp, restored)
    new_scheduler = build_lr_schedule(hp, new_optimizer)
    back = restore_training_state(load_checkpoint(tmp_path / "checkpoints-b"), restored, restored_ema,
                                  new_optimizer, new_scheduler)
    assert back.global_step == 150 and back.gradient_skip_count == 3
    for (key, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), key
    for (key, a), b in zip(ema_model.state_dict().items(), restored_ema.state_dict().values()):
        assert torch.equal(a, b), key
    assert new_optimizer.param_groups[0]["lr"] == pytest.approx(scheduler.lr_lambdas[0](150) * hp.optimizer.learning_rate)
