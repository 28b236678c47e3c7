"""The model code's own check of a choice key (reached when a model is built from values that no config
validation saw): both frameworks name the key, the value and the choices, as the config check does."""
from __future__ import annotations

import pytest

from hparams.config import Config, load_config
from hparams.schema import LEARNING_RATE_SCHEMES, OPTIMIZERS, OUTPUT_SAMPLINGS, VARIATION_SCHEDULES
from tests.helpers import FRAMEWORKS

REFERENCE = "egs/quickstart.cfg"


def _unvalidated(section: str, key: str, value: str) -> Config:
    """The quick-start config with one value replaced behind validation's back."""
    sections = load_config(REFERENCE).to_dict()
    sections[section][key] = value
    return Config(sections)


def _kl_beta(framework: str, hp: Config):
    if framework == "torch":
        from efficient_vdvae_torch.model.schedules import kl_beta
    else:
        from efficient_vdvae_jax.model.schedules import kl_beta
    return kl_beta(hp, 10)


def _learning_rate(framework: str, hp: Config):
    if framework == "torch":
        from efficient_vdvae_torch.model.schedules import learning_rate
        return learning_rate(hp, 10)
    from efficient_vdvae_jax.model.schedules import learning_rate_schedule
    return learning_rate_schedule(hp)(10)


def _optimizer(framework: str, hp: Config):
    if framework == "torch":
        import torch

        from efficient_vdvae_torch.model.optimizers import build_optimizer
        return build_optimizer(hp, torch.nn.Linear(2, 2))
    from efficient_vdvae_jax.model.optimizers import build_optimizer
    return build_optimizer(hp)


def _render(framework: str, hp: Config):
    from efficient_vdvae_common.output_distribution import OutputDistribution

    dist = OutputDistribution.from_hparams(hp)
    if framework == "torch":
        import torch

        from efficient_vdvae_torch.model.output_distribution import render_output
        return render_output(torch.zeros(1, 100, 4, 4), dist, hp.synthesis.output_sampling)
    import jax
    import jax.numpy as jnp

    from efficient_vdvae_jax.model.output_distribution import render_output
    return render_output(jnp.zeros((1, 4, 4, 100)), dist, jax.random.PRNGKey(0), hp.synthesis.output_sampling)


CASES = [
    ("loss", "variation_schedule", "Cubic", VARIATION_SCHEDULES, _kl_beta),
    ("optimizer", "learning_rate_scheme", "cyclic", LEARNING_RATE_SCHEMES, _learning_rate),
    ("optimizer", "type", "Lion", OPTIMIZERS, _optimizer),
    ("synthesis", "output_sampling", "mode", OUTPUT_SAMPLINGS, _render),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("section, key, value, choices, call", CASES, ids=[case[1] for case in CASES])
def test_an_unknown_choice_names_the_key_the_value_and_the_choices(framework, section, key, value, choices, call):
    with pytest.raises(ValueError) as raised:
        call(framework, _unvalidated(section, key, value))
    assert str(raised.value) == f"{section}.{key} = {value!r}: expected one of {choices}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_unknown_distribution_base_names_the_key(framework):
    if framework == "torch":
        from efficient_vdvae_torch.model.latent_layers import GaussianLatentLayer
        build = lambda: GaussianLatentLayer(8, 2, "log", 1.0)  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        from efficient_vdvae_jax.model.latent_layers import GaussianLatentLayer
        layer = GaussianLatentLayer(2, "log", 1.0)
        build = lambda: layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 8)))  # noqa: E731
    with pytest.raises(ValueError, match=r"^model.distribution_base = 'log': expected one of \('std', 'logstd'\)"):
        build()
