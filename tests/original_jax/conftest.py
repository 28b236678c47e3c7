"""Fixtures of the original-JAX checkpoint tests: the shared fixture written by the original JAX code.

CI puts a copy of shared/ beside the clone (<repo>/../shared), as on the development machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

ORIGINAL_JAX_DIR = REPO_ROOT.parent / "shared" / "reference" / "original_jax_small"
MSGPACK = ORIGINAL_JAX_DIR / "checkpoints_msgpack" / "checkpoint_3"
ORBAX = ORIGINAL_JAX_DIR / "checkpoints_orbax" / "checkpoint_3"
FORMATS = {"msgpack": MSGPACK, "orbax": ORBAX}
NUM_GROUPS = 10


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
