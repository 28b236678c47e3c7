"""Convolution with the PyTorch original's "same" padding and Glorot init (SPEC.md section 2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from efficient_vdvae_common.padding import as_pair as _pair
from efficient_vdvae_common.padding import same_padding_pairs

IntPair = int | Sequence[int]


def same_padding(kernel_size: IntPair, stride: IntPair, odd_pixel_first: bool = True
                 ) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding, as F.pad takes it: `k - s` per axis.

    An odd total puts the extra pixel on the left/top (the original's Conv2d),
    or on the right/bottom with `odd_pixel_first=False` (torch's `padding='same'`).
    """
    (top, bottom), (left, right) = same_padding_pairs(kernel_size, stride, odd_pixel_first)
    return left, right, top, bottom


class Conv2d(nn.Conv2d):
    """Conv2d with "same" padding and Glorot-uniform weights, zero bias.

    `default_init=True` keeps PyTorch's own initialisation, which the original
    used for the first conv of every ResidualConvCell. `odd_pixel_first=False`
    pads an odd total after the data, as that conv's `padding='same'` did.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, default_init: bool = False, odd_pixel_first: bool = True):
        left, right, top, bottom = same_padding(kernel_size, stride, odd_pixel_first)
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
