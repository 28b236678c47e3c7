"""The output distribution's settings (SPEC.md section 5), framework-free.

Which likelihood the decoder's logits parameterise (a Bernoulli for binarized
MNIST, else a discretized mixture of logistics), with the numbers its
formulas need. Both frameworks read it once from the config and pass it to
their model/output_distribution.py functions (log-likelihood, sampler, mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from efficient_vdvae_common.architecture import is_binarized_mnist, pixel_range


@dataclass(frozen=True)
class OutputDistribution:
    """The output likelihood's settings; frozen and hashable, so a jitted function may close over it."""

    bernoulli: bool
    num_mixtures: int
    channels: int
    num_bits: float
    base: str  # 'std' or 'logstd': how the raw scales become logistic scales (model.output_distribution_base)
    smoothing_beta: float
    min_log_scale: float

    @classmethod
    def from_hparams(cls, hp: Any) -> "OutputDistribution":
        """The settings of a config (hparams.load_config has checked the keys' values)."""
        channels = hp.data.channels
        bernoulli = is_binarized_mnist(hp)
        if not bernoulli and channels not in (1, 3):
            raise ValueError(f"data.channels = {channels}: the mixture of logistics supports 1 or 3 channels")
        return cls(
            bernoulli=bernoulli,
            num_mixtures=hp.model.num_output_mixtures,
            channels=channels,
            num_bits=hp.data.num_bits,
            base=hp.model.output_distribution_base,
            smoothing_beta=hp.model.output_gradient_smoothing_beta,
            min_log_scale=hp.loss.min_mol_logscale,
        )

    @property
    def pixel_range(self) -> tuple[float, float]:
        """(min_pix, max_pix) of the model-space pixel values."""
        return pixel_range(self.num_bits)

    @property
    def num_classes(self) -> float:
        """2^bits - 1: the steps between the lowest and the highest pixel level (bins 2 / num_classes wide)."""
        return 2.0 ** self.num_bits - 1.0
