"""Noise schedules and the Gaussian forward process of DDPM (Ho et al., 2020).

Index convention: code index ``t`` in ``0..T-1`` is the paper's step ``t+1``. All per-step
quantities are float64 tables on the schedule's device (``NoiseSchedule.to``), computed once and
gathered to the input's dtype; ``t`` is a tensor of per-sample steps, or an int for a step that the
whole batch shares (then each quantity is a Python float).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from torch import Tensor

MAX_BETA = 0.999


def linear_betas(timesteps: int) -> Tensor:
    """Ho et al.: beta linear from 1e-4 to 0.02 at T=1000, scaled by 1000/T (improved DDPM)."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal eq. 17: alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2), beta = 1 − ᾱ_t/ᾱ_{t−1} ≤ 0.999."""

    def alpha_bar(t: float) -> float:
        return math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar(i + 1) / alpha_bar(i), MAX_BETA) for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


SCHEDULES: dict[str, Callable[[int, float], Tensor]] = {
    "linear": lambda timesteps, cosine_s: linear_betas(timesteps),
    "cosine": cosine_betas,
}
"""``diffusion.schedule``: a β schedule's name -> its β_1..β_T from (timesteps, cosine_s)."""

Step = Tensor | int  # per-sample steps (B,), or one step shared by the whole batch


def _gather(values: Tensor, t: Step, like: Tensor) -> Tensor | float:
    """values[t] shaped (B, 1, 1, ...) to broadcast against ``like``. A step shared by the batch (an int)
    gives a Python float instead: no kernel per coefficient, and no device sync when ``values`` is on the host
    (the samplers, whose steps are shared, work on a host copy of the schedule)."""
    if isinstance(t, int):
        return values[t].item()
    out = values[t.to(values.device)].to(device=like.device, dtype=like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    """Every fixed quantity of the forward process, named after the DDPM paper."""

    betas: Tensor

    def __post_init__(self) -> None:
        if self.betas.ndim != 1 or len(self.betas) < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")

    @classmethod
    def create(cls, schedule: str, timesteps: int, cosine_s: float = 0.008) -> NoiseSchedule:
        """The schedule named ``schedule`` (a key of ``SCHEDULES``) over ``timesteps`` steps."""
        if timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {timesteps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
        return cls(SCHEDULES[schedule](timesteps, cosine_s))

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The same schedule with its tables on ``device`` (kept in float64); itself, with the tables it has already
        computed, when it is there."""
        return self if self.betas.device == torch.device(device) else NoiseSchedule(self.betas.to(device))

    @property
    def timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return len(self.betas)

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = Π_{s≤t} α_s."""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> Tensor:
        """ᾱ_{t−1}, with ᾱ_0 := 1."""
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @cached_property
    def posterior_variance(self) -> Tensor:
        """β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t (DDPM eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_log_variance_clipped(self) -> Tensor:
        """log β̃_t with β̃_1 (= 0) replaced by β̃_2, as in improved-diffusion. A one-step schedule has no β̃_2;
        its only step adds no noise, so β_1 stands in and keeps the logarithm finite."""
        variance = self.posterior_variance
        head = variance[1:2] if len(variance) > 1 else self.betas[:1]
        return torch.log(torch.cat([head, variance[1:]]))

    @cached_property
    def sqrt_alphas_cumprod(self) -> Tensor:
        return self.alphas_cumprod.sqrt()

    @cached_property
    def sqrt_one_minus_alphas_cumprod(self) -> Tensor:
        return (1.0 - self.alphas_cumprod).sqrt()

    @cached_property
    def sqrt_recip_alphas_cumprod(self) -> Tensor:
        return self.alphas_cumprod.rsqrt()

    @cached_property
    def sqrt_recipm1_alphas_cumprod(self) -> Tensor:
        return (1.0 / self.alphas_cumprod - 1.0).sqrt()

    @cached_property
    def posterior_mean_coef1(self) -> Tensor:
        """Coefficient of x_0 in μ̃_t: √ᾱ_{t−1} β_t / (1 − ᾱ_t)."""
        return self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)

    @cached_property
    def posterior_mean_coef2(self) -> Tensor:
        """Coefficient of x_t in μ̃_t: √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)."""
        return (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def respace(self, use_timesteps: list[int]) -> NoiseSchedule:
        """Schedule on a subsequence S of steps: β_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}} (improved DDPM §4)."""
        alphas_cumprod = self.alphas_cumprod[torch.tensor(sorted(use_timesteps), device=self.betas.device)]
        previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        return NoiseSchedule(1.0 - alphas_cumprod / previous)

    def q_mean_variance(self, x_0: Tensor, t: Step) -> tuple[Tensor, Tensor | float]:
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4)."""
        return _gather(self.sqrt_alphas_cumprod, t, x_0) * x_0, _gather(1.0 - self.alphas_cumprod, t, x_0)

    def q_sample(self, x_0: Tensor, t: Step, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        return _gather(self.sqrt_alphas_cumprod, t, x_0) * x_0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x_0) * noise

    def q_posterior(self, x_0: Tensor, x_t: Tensor, t: Step) -> tuple[Tensor, Tensor | float, Tensor | float]:
        """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (DDPM eqs. 6-7): mean, variance, clipped log variance.

        μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t.
        """
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x_0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return (
            mean,
            _gather(self.posterior_variance, t, x_t),
            _gather(self.posterior_log_variance_clipped, t, x_t),
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Step, eps: Tensor) -> Tensor:
        """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
        return _gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t: Tensor, t: Step, x_0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
        return (x_t - _gather(self.sqrt_alphas_cumprod, t, x_t) * x_0) / _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def velocity(self, x_0: Tensor, t: Step, eps: Tensor) -> Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho, 2022)."""
        return _gather(self.sqrt_alphas_cumprod, t, x_0) * eps - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_0) * x_0

    def predict_x0_from_v(self, x_t: Tensor, t: Step, v: Tensor) -> Tensor:
        """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
        return _gather(self.sqrt_alphas_cumprod, t, x_t) * x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v


class ScheduleSettings(Protocol):
    """What a schedule is built from: the ``diffusion`` section of a run config."""

    schedule: str
    timesteps: int
    cosine_s: float


def build_schedule(diffusion: ScheduleSettings) -> NoiseSchedule:
    """The run's noise schedule (``diffusion.schedule``, ``timesteps``, ``cosine_s``)."""
    return NoiseSchedule.create(diffusion.schedule, diffusion.timesteps, diffusion.cosine_s)
