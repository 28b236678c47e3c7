"""Convolution with TF-style "same" padding and Glorot init (SPEC.md section 2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IntPair = int | Sequence[int]


def _pair(value: IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair


def same_padding(kernel_size: IntPair, stride: IntPair) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding whose total per axis is `k - s`.

    An odd total puts the extra pixel on the right/bottom, as TensorFlow and
    JAX do, so that both frameworks see the same windows.
    """
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    if kh < sh or kw < sw:
        raise ValueError(f"kernel {(kh, kw)} smaller than stride {(sh, sw)} is not supported")
    total_h, total_w = kh - sh, kw - sw
    return total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2


class Conv2d(nn.Conv2d):
    """Conv2d with TF-style "same" padding and Glorot-uniform weights, zero bias.

    `default_init=True` keeps PyTorch's own initialisation, which the original
    used for the first conv of every ResidualConvCell.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, default_init: bool = False):
        left, right, top, bottom = same_padding(kernel_size, stride)
        symmetric = left == right and top == bottom
        super().__init__(in_channels, out_channels, _pair(kernel_size), _pair(stride),
                         padding=(top, left) if symmetric else 0)
        # Asymmetric padding cannot be expressed by nn.Conv2d; pad explicitly then.
        self._explicit_padding = None if symmetric else (left, right, top, bottom)
        if not default_init:
            nn.init.xavier_uniform_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_padding is not None:
            x = F.pad(x, self._explicit_padding)
        return super().forward(x)
