"""The importance-weighted NLL bound (SPEC.md section 8, synthesis.num_importance_samples), framework-free.

With K posterior samples z_k ~ q(z | x) and log weights
`w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)` (nats),

    -log p(x) <= -log (1/K) sum_k exp(w_k) <= -mean_k w_k,

the bound tightening as K grows (Burda et al. 2016; NVAE reports it). Each
framework computes the log weights with its own tensors; this module turns
them into the bound and into report units, and plans the batched passes.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from efficient_vdvae_common.architecture import LN2, image_dims, is_binarized_mnist
from efficient_vdvae_common.model_health import check_finite_outputs


def importance_weighted_nll(log_weights: np.ndarray) -> np.ndarray:
    """(N, K) log weights in nats -> (N,) bounds `-log mean_k exp(w_k)` in nats (float64, log-sum-exp).

    K = 1 gives `-w` exactly.
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 2 or log_weights.shape[1] == 0:
        raise ValueError(f"log weights must be (images, samples) with samples >= 1, got {log_weights.shape}")
    peak = np.max(log_weights, axis=1, keepdims=True)
    if not np.all(np.isfinite(peak)):
        raise ValueError("log weights hold a non-finite maximum")
    log_mean = peak[:, 0] + np.log(np.mean(np.exp(log_weights - peak), axis=1))
    return -log_mean


def batch_bound_sum(log_weights: np.ndarray, hp: Any, what: str, checkpoint: str) -> float:
    """Sum over a batch's images of their bounds in report units, as reconstruction accumulates them.

    A bound that is not finite (a NaN or infinite weight, or every weight of an
    image -inf) means a broken model, not a bad estimate: BrokenModelError naming
    the checkpoint, so the entry scripts print one line and exit 2.
    """
    log_weights = np.asarray(log_weights, dtype=np.float64)
    check_finite_outputs(bool(np.isfinite(np.max(log_weights, axis=1)).all()), what, checkpoint)
    return float(nats_to_report_units(importance_weighted_nll(log_weights), hp).sum())


def nats_to_report_units(nats_per_image: np.ndarray, hp: Any) -> np.ndarray:
    """Per-image nats -> the units NELBO is reported in: nats per image for binarized_mnist, else bits/dim."""
    nats_per_image = np.asarray(nats_per_image, dtype=np.float64)
    if is_binarized_mnist(hp):
        return nats_per_image
    return nats_per_image / (image_dims(hp) * LN2)


def sample_passes(num_images: int, num_samples: int, rows_per_pass: int) -> Iterator[np.ndarray]:
    """Rows (image index repeated per sample) of each forward pass: image i's K samples are rows
    i*K .. i*K+K-1 of the flattened (images * samples) array, cut into passes of `rows_per_pass`."""
    if num_samples < 1 or rows_per_pass < 1:
        raise ValueError(f"need num_samples >= 1 and rows_per_pass >= 1, got {num_samples}, {rows_per_pass}")
    rows = np.repeat(np.arange(num_images), num_samples)
    for start in range(0, rows.size, rows_per_pass):
        yield rows[start:start + rows_per_pass]
