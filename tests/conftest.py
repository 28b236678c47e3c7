"""Shared pytest fixtures: the reference fixture folder and small configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# The test process imports both frameworks. torch loads triton lazily (on the first optimizer, through
# torch._dynamo); loaded after jaxlib's threads are up, that import once crashed the process (SIGSEGV in
# triton's extension) in a slow run. Loading it first, before any JAX test, keeps the order fixed.
try:
    import torch._dynamo  # noqa: F401
except ImportError:  # a JAX-only environment
    pass

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests run on the CPU, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Most JAX tests, in this process and in the train.py/synthesize.py processes they start (which inherit
# the environment), compile the same few small models; compiling is most of their time on a CPU. JAX's
# persistent cache (keyed by the program, the compile options and the jax version) lets each compile
# once per machine. A maximum size also turns on the cache's file lock: test workers share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 1024 ** 3))
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_DIR = FIXTURES / "original_torch_small"
REFERENCE_CONFIG = REFERENCE_DIR / "config.cfg"
# The overrides the reference outputs were produced with (expected.json).
REFERENCE_OVERRIDES = (
    "train.batch_size=4",
    "val.batch_size=4",
    "synthesis.batch_size=4",
    "run.num_gpus=1",
)


@pytest.fixture
def reference_config():
    """The small configuration of the original-code reference outputs."""
    from hparams import load_config

    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES)


@pytest.fixture
def make_config():
    """Build a config from the reference one with extra `section.key=value` overrides."""
    from hparams import load_config

    def _make(*overrides: str):
        return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + tuple(overrides))

    return _make


@pytest.fixture
def single_torch_thread():
    """One torch intra-op thread: on a few shared cores OpenMP's spinning threads
    make small models' steps several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
