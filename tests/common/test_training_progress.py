"""TrainingProgress's step arithmetic and the batch-size rule the trainers share (common modules)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from efficient_vdvae_common.training_loop import check_batch_sizes
from efficient_vdvae_common.training_progress import TrainingProgress
from hparams import ConfigError


def test_a_skipped_step_consumes_a_batch_but_applies_no_update():
    progress = TrainingProgress(global_step=3, gradient_skip_count=1, data_epoch=2, data_batch=4)
    assert progress.after_step(skipped=False) == TrainingProgress(4, 1, 2, 5)
    assert progress.after_step(skipped=True) == TrainingProgress(3, 2, 2, 5)
    assert progress.after_step(skipped=True).consumed_batches == progress.consumed_batches + 1 == 5
    assert progress.next_epoch() == TrainingProgress(3, 1, 3, 0)
    assert progress.as_ints() == [3, 1, 2, 4]


def test_global_batches_must_split_evenly():
    hp = SimpleNamespace(train=SimpleNamespace(batch_size=8), val=SimpleNamespace(batch_size=6))
    check_batch_sizes(hp, 2, "devices")
    with pytest.raises(ConfigError, match=r"val.batch_size = 6 is not divisible by the 4 devices"):
        check_batch_sizes(hp, 4, "devices")
