"""Fixtures of the JAX tests: the framework the shared run fixtures build for; the model tests' reference
config, weights, batch, outputs and one jitted forward.

The reference fixtures are session-scoped so that each jitted function compiles once (compiles are the slow
part on a small CPU).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.convert_checkpoint import torch_state_dict_to_flax_params
from tests.conftest import REFERENCE_DIR
from tests.jax.helpers import load_reference_config, make_forward


@pytest.fixture
def framework() -> str:
    """tests/conftest.py's run fixtures (image_folders, run_overrides) build JAX's tiny run."""
    return "jax"


@pytest.fixture(scope="session")
def reference_hp():
    return load_reference_config()


@pytest.fixture(scope="session")
def reference_weights() -> dict[str, np.ndarray]:
    return dict(np.load(REFERENCE_DIR / "weights.npz"))


@pytest.fixture(scope="session")
def reference_batch() -> dict[str, np.ndarray]:
    return dict(np.load(REFERENCE_DIR / "batch.npz"))


@pytest.fixture(scope="session")
def reference_expected() -> tuple[dict, dict[str, np.ndarray]]:
    """(expected.json, expected_tensors.npz) of the original code."""
    with open(REFERENCE_DIR / "expected.json") as f:
        scalars = json.load(f)
    return scalars, dict(np.load(REFERENCE_DIR / "expected_tensors.npz"))


@pytest.fixture(scope="session")
def reference_params(reference_hp, reference_weights):
    return jax.tree.map(jnp.asarray, torch_state_dict_to_flax_params(reference_hp, reference_weights))


@pytest.fixture(scope="session")
def reference_forward(reference_hp):
    return make_forward(reference_hp)
