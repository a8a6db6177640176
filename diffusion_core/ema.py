"""Exponential moving average of model weights with warm-up.

theta_ema(t) = rate * theta_ema(t - 1) + (1 - rate) * theta(t), and during the
first ``warmup_steps`` optimizer steps the EMA is a plain copy of the weights,
so theta_ema(N) = theta(N) for N = warmup_steps. Buffers are always copied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class EMA:
    """EMA of one model's parameters, kept in ``shadow`` (eval mode, no grad)."""

    def __init__(self, model: nn.Module, rate: float, warmup_steps: int = 0) -> None:
        if not 0.0 < rate < 1.0:
            raise ValueError(f"EMA rate must be in (0, 1), got {rate}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.rate = float(rate)
        self.warmup_steps = int(warmup_steps)
        self.shadow: nn.Module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Update after ``step`` optimizer steps (1-based): copy during warm-up, then average."""
        ema_params = list(self.shadow.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(params) != len(ema_params):
            raise ValueError("model does not match the EMA's parameter structure")
        if step <= self.warmup_steps:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.rate)
        for ema_buf, buf in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "warmup_steps": self.warmup_steps, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate = float(state["rate"])
        self.warmup_steps = int(state["warmup_steps"])
        self.shadow.load_state_dict(state["shadow"])


class EMABank:
    """Several EMAs of the same model, one per rate."""

    def __init__(self, model: nn.Module, rates: Sequence[float], warmup_steps: int = 0) -> None:
        if not rates:
            raise ValueError("EMA rates must not be empty")
        if len(set(rates)) != len(rates):
            raise ValueError(f"duplicate EMA rates in {list(rates)}")
        self.emas: dict[float, EMA] = {float(r): EMA(model, r, warmup_steps) for r in rates}

    def update(self, model: nn.Module, step: int) -> None:
        for ema in self.emas.values():
            ema.update(model, step)

    def models(self) -> dict[float, nn.Module]:
        return {rate: ema.shadow for rate, ema in self.emas.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"emas": [ema.state_dict() for ema in self.emas.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rates = [float(s["rate"]) for s in state["emas"]]
        if rates != list(self.emas):
            raise ValueError(f"state holds EMA rates {rates}, bank tracks {list(self.emas)}")
        for ema, ema_state in zip(self.emas.values(), state["emas"], strict=True):
            ema.load_state_dict(ema_state)
