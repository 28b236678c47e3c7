"""Fixtures of the original-JAX checkpoint tests (test_original_jax_checkpoint*.py): the shared fixture written
by the original JAX code (tests/helpers.py: ORIGINAL_JAX_DIR)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import FORMATS, ORIGINAL_JAX_DIR


def pytest_collection_modifyitems(config, items):
    if not ORIGINAL_JAX_DIR.is_dir():
        skip = pytest.mark.skip(reason=f"the original-JAX fixture {ORIGINAL_JAX_DIR} is not there")
        for item in items:
            if "original_jax" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def original_expected() -> dict:
    return json.loads((ORIGINAL_JAX_DIR / "expected.json").read_text())


@pytest.fixture(scope="session")
def original_batch() -> dict[str, np.ndarray]:
    """`input` (NCHW), `input_nhwc`, and the stored posterior noise `eps_00`.. (NHWC)."""
    batch = dict(np.load(ORIGINAL_JAX_DIR / "batch.npz"))
    batch.update(np.load(ORIGINAL_JAX_DIR / "noise.npz"))
    return batch


@pytest.fixture(scope="session")
def original_states():
    """{format: OriginalJaxState} of both fixture checkpoints."""
    from efficient_vdvae_jax.original_checkpoint import read_original_checkpoint

    return {name: read_original_checkpoint(path) for name, path in FORMATS.items()}
