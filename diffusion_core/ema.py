"""Exponential moving average of model weights with warm-up.

theta_ema(t) = decay * theta_ema(t - 1) + (1 - decay) * theta(t), and during the
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

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.decay = float(decay)
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
            torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buf, buf in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup_steps": self.warmup_steps, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.warmup_steps = int(state["warmup_steps"])
        self.shadow.load_state_dict(state["shadow"])


class EMABank:
    """Several EMAs of the same model, one per decay rate."""

    def __init__(self, model: nn.Module, decays: Sequence[float], warmup_steps: int = 0) -> None:
        if not decays:
            raise ValueError("decays must not be empty")
        if len(set(decays)) != len(decays):
            raise ValueError(f"duplicate decay rates in {list(decays)}")
        self.emas: dict[float, EMA] = {float(d): EMA(model, d, warmup_steps) for d in decays}

    def update(self, model: nn.Module, step: int) -> None:
        for ema in self.emas.values():
            ema.update(model, step)

    def models(self) -> dict[float, nn.Module]:
        return {decay: ema.shadow for decay, ema in self.emas.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"emas": [ema.state_dict() for ema in self.emas.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        decays = [float(s["decay"]) for s in state["emas"]]
        if decays != list(self.emas):
            raise ValueError(f"state holds decays {decays}, bank tracks {list(self.emas)}")
        for ema, ema_state in zip(self.emas.values(), state["emas"], strict=True):
            ema.load_state_dict(ema_state)
