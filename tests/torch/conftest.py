"""Fixtures of the PyTorch tests: the framework the shared run fixtures build for, and a state comparison."""
from __future__ import annotations

import pytest


@pytest.fixture
def framework() -> str:
    """tests/conftest.py's run fixtures (image_folders, run_overrides) build PyTorch's tiny run."""
    return "torch"


def _assert_same_tree(a, b, where: str = "", atol: float = 0.0) -> None:
    """Nested dicts/lists of tensors and numbers are equal (to `atol` for tensors)."""
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{index}]", atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{where}: {m}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def assert_same_tree():
    return _assert_same_tree
