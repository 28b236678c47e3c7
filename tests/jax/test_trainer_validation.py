"""Validation means weigh images, not batches: a padded last batch counts only its real images."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from efficient_vdvae_common.noise_streams import VALIDATION_STREAM
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_jax.distributed import global_mesh
from efficient_vdvae_jax.train_step import init_params
from efficient_vdvae_jax.trainer import make_validation_step, padded_validation_batches, step_key, validate
from hparams import load_config
from tests.conftest import REFERENCE_CONFIG


def test_validation_means_over_images(run_overrides):
    hp = load_config(REFERENCE_CONFIG, overrides=run_overrides("val"))
    model = UniversalAutoEncoder(hp)
    params = init_params(hp, model, jax.random.PRNGKey(3))
    batches = list(padded_validation_batches(hp, num_devices=1))
    assert [(x.shape, int(mask.sum())) for x, mask in batches] == [((1, 4, 16, 16, 3), 4), ((1, 4, 16, 16, 3), 2)]

    scalars, avg_kl, (first_x, first_outputs) = validate(hp, make_validation_step(hp, model), params,
                                                         global_mesh(1))

    # By hand: each batch's own loss over its real images (the model sees the padded batch, as in
    # validation, so that the noise is the same), combined with weights 4/6 and 2/6.
    expected = {key: 0.0 for key in ("recon_report", "kl_div", "nelbo")}
    expected_kl = np.zeros(3)
    for index, (x, mask) in enumerate(batches):
        x, real = x[0], mask[0]
        model_rng, _ = jax.random.split(step_key(hp.run.seed, VALIDATION_STREAM, index))
        logits, posterior, prior = model.apply({"params": params}, model_rng, x)
        keep = lambda tree: jax.tree.map(lambda a: a[real], tree)  # noqa: E731
        out = compute_loss(hp, x[real], logits[real], keep(posterior), keep(prior), None)
        for key in expected:
            expected[key] += float(getattr(out, key)) * real.sum() / 6
        expected_kl += np.asarray(out.avg_kl_per_group) * real.sum() / 6
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-5), key
    np.testing.assert_allclose(avg_kl, expected_kl, rtol=1e-5)
    assert 0.0 < scalars["ssim"] < 1.0
    # The summaries get the first batch's real images and the outputs drawn for them.
    np.testing.assert_array_equal(first_x, batches[0][0][0])
    assert first_outputs["samples"].shape == first_x.shape
    assert first_outputs["logits"].shape[:3] == (4, 16, 16)
    assert np.all(np.abs(first_outputs["samples"]) <= 1.0)
