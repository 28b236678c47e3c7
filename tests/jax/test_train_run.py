"""`python train.py` (JAX) as users run it: a short real run, its TensorBoard events, its checkpoint."""
from __future__ import annotations

import math
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import check, run_training


@pytest.mark.slow  # a full JAX train.py run (compiles the train and validation steps)
def test_short_run_logs_and_checkpoints(run_overrides, tmp_path):
    """Also issue 9 item 5 (test_validation_at_first_and_last_step): an interval longer than the run
    still validates and checkpoints after the first update and at the end."""
    result = run_training(run_overrides("short", "train.total_train_steps=2",
                                        "train.checkpoint_and_eval_interval_in_steps=100"), cwd=tmp_path)
    check(result)
    nelbos = [float(v) for v in re.findall(r"step \d+/2 \|.*\| nelbo (\S+) \|", result.stdout)]
    assert len(nelbos) == 2 and all(math.isfinite(v) and v > 0 for v in nelbos), result.stdout
    assert re.search(r"step 2 \| train nelbo .* val recon .* ssim (\S+)", result.stdout), result.stdout
    assert (tmp_path / "logs-short" / "hparams-short.cfg").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints-short").iterdir()) == ["1", "2"]

    train = EventAccumulator(str(tmp_path / "logs-short" / "train"), size_guidance={"histograms": 0, "images": 0})
    val = EventAccumulator(str(tmp_path / "logs-short" / "val"), size_guidance={"histograms": 0, "images": 0})
    train.Reload()
    val.Reload()
    assert {"Losses/reconstruction", "Losses/kl_div", "Losses/nelbo", "Losses/loss", "Schedules/beta",
            "Schedules/learning_rate", "Stats/active_groups", "Stats/grad_norm", "Stats/gradient_skip_count",
            "Stats/seconds_per_step", "Metrics/ssim", "Latent_KL/group_00", "Latent_KL/group_02"} \
        <= set(train.Tags()["scalars"])
    assert [e.step for e in train.Scalars("Losses/nelbo")] == [1, 2]
    assert [e.value for e in train.Scalars("Losses/nelbo")] == [pytest.approx(v, rel=1e-5) for v in nelbos]
    # warmup_steps = 1: the first update runs at learning rate 0, the second at the full 1e-3.
    assert [e.value for e in train.Scalars("Schedules/learning_rate")] == [0.0, pytest.approx(1e-3)]
    assert {"Distributions/target", "Distributions/output", "OutputLayer/means",
            "Weights/top_down.output_conv.kernel"} <= set(train.Tags()["histograms"])
    assert {"Images/targets", "Images/reconstructions"} <= set(train.Tags()["images"])

    assert {"Losses/nelbo", "Metrics/ssim", "Latent_KL/group_00"} <= set(val.Tags()["scalars"])
    val_nelbo = val.Scalars("Losses/nelbo")
    assert [e.step for e in val_nelbo] == [1, 2] and all(math.isfinite(e.value) for e in val_nelbo)
    assert [e.step for e in train.Scalars("Metrics/ssim")] == [1, 2]
    assert 0.0 < val.Scalars("Metrics/ssim")[0].value < 1.0
    assert {"OutputLayer/log_scales", "Distributions/target"} <= set(val.Tags()["histograms"])
    images = val.Images("Images/targets")
    # The first validation batch, 4 images of 16x16: a 2x2 grid with 2-pixel gaps.
    assert [image.step for image in images] == [1, 2]
    assert (images[0].width, images[0].height) == (2 + 2 * 18, 2 + 2 * 18)

