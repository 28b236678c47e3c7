"""Parameter counts of the published configurations, built on the meta device (no memory, no forward)."""
from __future__ import annotations

import json

import torch

from efficient_vdvae_torch.model import UniversalAutoEncoder
from tests.conftest import FIXTURES, REPO_ROOT

EGS_NAMES = sorted(json.loads((FIXTURES / "egs_values.json").read_text()))
# The original's count for cifar10_baseline once its lazily created unpool biases exist.
CIFAR10_BASELINE_PARAMETERS = 56_598_692


def count_parameters(config_name: str) -> int:
    from hparams import load_config

    hp = load_config(REPO_ROOT / "egs" / f"{config_name}.cfg")
    with torch.device("meta"):
        model = UniversalAutoEncoder(hp)
    return sum(p.numel() for p in model.parameters())


def test_cifar10_baseline_matches_the_original_count():
    assert count_parameters("cifar10_baseline") == CIFAR10_BASELINE_PARAMETERS


def test_every_published_config_builds_and_prints_its_count(capsys):
    counts = {name: count_parameters(name) for name in EGS_NAMES}
    with capsys.disabled():
        print("\n" + "\n".join(f"  {name:30s} {n:>14,d}" for name, n in counts.items()))
    assert len(counts) == 20
    assert all(n > 1_000_000 for n in counts.values())
