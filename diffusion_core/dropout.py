"""Inverted dropout (Srivastava et al., 2014) with a fast mask on the CPU.

y = x * m / (1 - p), m_i ~ Bernoulli(1 - p). On CUDA this is ``F.dropout`` (one fused Philox kernel).
On the CPU, ``F.dropout``'s ``bernoulli_`` draws one number from the generator per element and took
9% of a training step of the benchmark U-Net (bench/bench_train.py's profile); here the mask comes from
16-bit uniform integers, four per 64-bit draw of the same global generator, so seeding with
``torch.manual_seed`` makes it reproducible as before. The keep probability is then quantised to
multiples of 1/65536 (|error| <= 7.7e-6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 4  # int16 lanes in one int64 draw
_INT16_LEVELS = 2**16


def uniform_int16(numel: int) -> Tensor:
    """``numel`` independent integers uniform on [-32768, 32767] (the bits of full-range int64 draws)."""
    draws = torch.randint(-(2**63), 2**63 - 1, ((numel + _LANES - 1) // _LANES,), dtype=torch.int64)
    return draws.view(torch.int16)[:numel]


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) (identity when not
    training or p = 0)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training=True)
    drop_below = round(p * _INT16_LEVELS) - _INT16_LEVELS // 2  # P(u < drop_below) = round(p * 2^16) / 2^16
    keep = uniform_int16(x.numel()).view(x.shape) >= drop_below
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` with the fast CPU mask of :func:`dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
