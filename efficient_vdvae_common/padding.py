"""The "same" padding rule of the PyTorch original (SPEC.md section 2), for both frameworks.

Each axis gets `k - s` pixels of padding in total. When that total is odd, the
original's own Conv2d puts the extra pixel BEFORE the data (left/top); the first
conv of every residual cell was a plain torch conv with `padding='same'`, which
puts it AFTER (right/bottom). Both matter only for even kernels (k - s odd at
stride 1); every published config has odd kernels.
"""
from __future__ import annotations

from typing import Sequence

KernelPair = int | Sequence[int]


def as_pair(value: KernelPair) -> tuple[int, int]:
    """An int `k` means (k, k); else a pair (height, width)."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair


def same_padding_pairs(kernel_size: KernelPair, stride: KernelPair, odd_pixel_first: bool = True
                       ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)): `k - s` pixels per axis, an odd one first or last."""
    pads = []
    for k, s in zip(as_pair(kernel_size), as_pair(stride)):
        total = k - s
        if total < 0:
            raise ValueError(f"kernel size {k} smaller than stride {s} is not supported")
        small, large = total // 2, total - total // 2
        pads.append((large, small) if odd_pixel_first else (small, large))
    return pads[0], pads[1]
