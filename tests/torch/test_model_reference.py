"""The model reproduces the original PyTorch code's outputs on its own weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss
from tests.conftest import REFERENCE_DIR

SCALAR_RTOL = 1e-5
TENSOR_RTOL = 1e-4
NUM_GROUPS = 10


@pytest.fixture(scope="module")
def reference():
    weights = np.load(REFERENCE_DIR / "weights.npz")
    batch = np.load(REFERENCE_DIR / "batch.npz")
    return {
        "state_dict": {k: torch.from_numpy(weights[k]) for k in weights.files},
        "x": torch.from_numpy(batch["input"]),
        "eps": [torch.from_numpy(batch[f"eps_{g:02d}"]) for g in range(NUM_GROUPS)],
        "expected": json.loads((REFERENCE_DIR / "expected.json").read_text()),
        "tensors": dict(np.load(REFERENCE_DIR / "expected_tensors.npz")),
    }


@pytest.fixture
def reference_model(reference_config, reference):
    model = UniversalAutoEncoder(reference_config)
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def assert_close_relative(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    assert error < rtol, f"{what}: relative error {error:.3g}"


def test_state_dict_keys_and_parameter_count(reference_config, reference):
    model = UniversalAutoEncoder(reference_config)
    assert sorted(model.state_dict()) == sorted(reference["state_dict"])
    for key, value in model.state_dict().items():
        assert tuple(value.shape) == tuple(reference["state_dict"][key].shape), key
    assert sum(p.numel() for p in model.parameters()) == reference["expected"]["sampled_noise"]["total_params"]


@pytest.mark.parametrize("mode", ["zero_noise", "sampled_noise"])
def test_reproduces_original_outputs(reference_config, reference_model, reference, mode):
    x = reference["x"]
    kwargs = {"posterior_temperature": 0.0} if mode == "zero_noise" else {"noise": reference["eps"]}
    prefix = "tensors_zero_noise" if mode == "zero_noise" else "tensors"
    with torch.no_grad():
        logits, posterior, prior = reference_model(x, **kwargs)
        out = compute_loss(reference_config, x, logits, posterior, prior, step=0)
    expected, tensors = reference["expected"][mode], reference["tensors"]

    assert_close_relative(logits, tensors[f"{prefix}.logits"], TENSOR_RTOL, "logits")
    assert len(posterior) == len(prior) == NUM_GROUPS
    for g in range(NUM_GROUPS):
        for name, stats in (("posterior", posterior[g]), ("prior", prior[g])):
            for part, value in zip(("mean", "std"), stats):
                key = f"{prefix}.{name}_{g:02d}.{part}"
                assert_close_relative(value, tensors[key], TENSOR_RTOL, key)

    assert_close_relative(out.beta, expected["beta(step_n)"], SCALAR_RTOL, "beta")
    assert_close_relative(out.recon_loss.item(), expected["recon_loss_nats_per_dim"], SCALAR_RTOL, "recon nats")
    assert_close_relative(out.recon_report.item(), expected["recon_loss_bits_per_dim"], SCALAR_RTOL, "recon bits")
    # Per-group values are compared group by group (each relative to itself).
    for g in range(NUM_GROUPS):
        assert_close_relative(out.kl_per_group[g].item(), expected["kl_per_layer_nats_per_dim"][g],
                              SCALAR_RTOL, f"kl group {g}")
        assert_close_relative(out.avg_kl_per_group[g].item(), expected["kl_per_layer_avg_bits_per_latent_dim"][g],
                              SCALAR_RTOL, f"avg kl group {g}")
    assert_close_relative(out.kl_div.item(), expected["kl_total_bits_per_dim"], SCALAR_RTOL, "kl_div")
    assert_close_relative(out.nelbo.item(), expected["nelbo_bits_per_dim"], SCALAR_RTOL, "nelbo")
    assert_close_relative(out.loss.item(), expected["total_generator_loss(step_n)"], SCALAR_RTOL, "loss")


@pytest.mark.parametrize("step", ["4000", "1000000000"])
def test_reproduces_original_loss_at_later_steps(reference_config, reference_model, reference, step):
    """Step 4000: beta ~0.79 with gamma balancing; 1e9: beta 1, gamma off."""
    x = reference["x"]
    with torch.no_grad():
        logits, posterior, prior = reference_model(x, posterior_temperature=0.0)
        out = compute_loss(reference_config, x, logits, posterior, prior, step=int(step))
    expected = reference["expected"]["zero_noise_at_other_steps"][step]
    assert_close_relative(out.beta, expected["beta(step_n)"], SCALAR_RTOL, "beta")
    assert_close_relative(out.loss.item(), expected["total_generator_loss(step_n)"], SCALAR_RTOL, "loss")


def test_gamma_balancing_changes_the_loss_at_step_4000(reference_config, reference_model, reference):
    """Guards the step-4000 check: without balancing the loss would differ measurably."""
    x = reference["x"]
    with torch.no_grad():
        logits, posterior, prior = reference_model(x, posterior_temperature=0.0)
        out = compute_loss(reference_config, x, logits, posterior, prior, step=4000)
    unbalanced = out.recon_loss + out.beta * out.kl_per_group.sum()
    assert abs(unbalanced.item() - out.loss.item()) / out.loss.item() > 1e-5
