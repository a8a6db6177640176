"""Reverse-process samplers: DDPM ancestral (Ho et al., Algorithm 2) and DDIM (Song et al., eq. 12).

Both run on a subsequence of S steps of the training schedule ("leading" spacing, t_i = i·⌊T/S⌋, or
any ascending list starting at 0 through ``sample_from``),
guide a class-conditional model without a classifier (seed 004 eq. 8) and may clip the predicted
x_0 statically to [−1, 1] or by dynamic thresholding (Saharia et al.). The initial noise x_T is an
input, so that every evaluation can start from the same seeded noise (common random numbers).
A model with a learned variance (2C output channels) samples DDPM with Σθ (improved DDPM eq. 15) on
the respaced schedule; DDIM only uses its mean channels.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from diffusion_core.losses import learned_log_variance
from diffusion_core.objectives import Prediction, split_output, to_eps_and_x0
from diffusion_core.schedules import NoiseSchedule


def leading_timesteps(timesteps: int, steps: int) -> list[int]:
    """t_i = i·⌊T/S⌋ for i < S: the sub-sequence, ascending (diffusers' "leading" spacing)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in 1..{timesteps}, got {steps}")
    stride = timesteps // steps
    return [i * stride for i in range(steps)]


def dynamic_threshold(x_0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding: s = max(1, quantile_p |x̂_0|) per sample; x̂_0 ← clip(x̂_0, −s, s)/s."""
    flat = x_0.reshape(len(x_0), -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x_0.dtype)
    s = s.reshape(-1, *([1] * (x_0.ndim - 1)))
    return torch.maximum(torch.minimum(x_0, s), -s) / s


CLIPS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "none": lambda x_0, percentile: x_0,
    "static": lambda x_0, percentile: x_0.clamp(-1.0, 1.0),
    "dynamic": dynamic_threshold,
}
"""``eval.clip``: how x̂_0 is clipped at each sampling step -> the clip of (x̂_0, threshold percentile)."""


def guided_output(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor | None, guidance_weight: float) -> Tensor:
    """Classifier-free guidance, seed 004 eq. 8: f̃ = w f(x_t, t, c) + (1 − w) f(x_t, t, ∅).

    w = 1 is the conditional model, w = 0 the unconditional one; with no labels the model is
    called once, unconditionally. A learned variance output keeps the conditional Σθ (as GLIDE).
    """
    if y is None or guidance_weight == 1.0:
        return model(x_t, t, y)
    null = torch.full_like(y, model.null_class)
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
    conditional, unconditional = both.chunk(2)
    channels = x_t.shape[1]
    guided = guidance_weight * conditional[:, :channels] + (1.0 - guidance_weight) * unconditional[:, :channels]
    return torch.cat([guided, conditional[:, channels:]], dim=1)


def predict(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int,
    prediction: Prediction,
    settings: SamplerSettings,
    y: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(ε̂, x̂_0, variance output) at x_t, every sample at step t; when x̂_0 is clipped, ε̂ is recomputed from
    it so both stay consistent. The variance output is None unless the model learns Σθ."""
    t_batch = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
    output, var_output = split_output(guided_output(model, x_t, t_batch, y, settings.guidance_weight), x_t.shape[1])
    eps, x_0 = to_eps_and_x0(prediction, schedule, x_t, t, output)
    if settings.clip != "none":
        x_0 = CLIPS[settings.clip](x_0, settings.threshold_percentile)
        eps = schedule.predict_eps_from_x0(x_t, t, x_0)
    return eps, x_0, var_output


def ddim_step(
    x_t: Tensor,
    eps: Tensor,
    x_0: Tensor,
    alpha_cumprod: float,
    alpha_cumprod_prev: float,
    eta: float,
    noise: Tensor | None,
) -> Tensor:
    """DDIM eq. 12: x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t−1})."""
    sigma = eta * math.sqrt((1 - alpha_cumprod_prev) / (1 - alpha_cumprod) * (1 - alpha_cumprod / alpha_cumprod_prev))
    x_prev = math.sqrt(alpha_cumprod_prev) * x_0 + math.sqrt(max(1 - alpha_cumprod_prev - sigma**2, 0.0)) * eps
    if noise is not None and eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def _step_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def ddim_loop(model: nn.Module, schedule: NoiseSchedule, x_T: Tensor, timesteps: list[int], prediction: Prediction,
              settings: SamplerSettings, y: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """DDIM (eq. 12) down the sub-sequence ``timesteps``; η = ``settings.eta``."""
    x = x_T
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    for i in reversed(range(len(timesteps))):
        eps, x_0, _ = predict(model, schedule, x, timesteps[i], prediction, settings, y)
        alpha_cumprod_prev = alphas_cumprod[timesteps[i - 1]] if i > 0 else 1.0
        noise = _step_noise(x, generator) if settings.eta > 0 and i > 0 else None
        x = ddim_step(x, eps, x_0, alphas_cumprod[timesteps[i]], alpha_cumprod_prev, settings.eta, noise)
    return x.clamp(-1.0, 1.0)


def ddpm_loop(model: nn.Module, schedule: NoiseSchedule, x_T: Tensor, timesteps: list[int], prediction: Prediction,
              settings: SamplerSettings, y: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """Algorithm 2 on the respaced schedule: x_{t−1} = μ̃(x_t, x̂_0) + σ_t z with σ_t² = β̃_t, or the
    learned Σθ, whose interpolation v is relative to the respaced β_t and β̃_t (as improved-diffusion)."""
    respaced = schedule.respace(timesteps)
    x = x_T
    for i in reversed(range(len(timesteps))):
        _, x_0, var_output = predict(model, schedule, x, timesteps[i], prediction, settings, y)
        mean, _, log_variance = respaced.q_posterior(x_0, x, i)
        std = math.exp(0.5 * log_variance) if var_output is None else (0.5 * learned_log_variance(respaced, i, var_output)).exp()
        x = mean + std * _step_noise(x, generator) if i > 0 else mean
    return x.clamp(-1.0, 1.0)


Sampler = Callable[[nn.Module, NoiseSchedule, Tensor, list[int], Prediction, "SamplerSettings", Tensor | None,
                    torch.Generator | None], Tensor]
SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm_loop, "ddim": ddim_loop}
"""``eval.sampler``: a sampler's name -> its reverse-process loop."""


class SamplerSettings(BaseModel):
    """How samples are drawn from a trained network: the sampling keys of the ``eval`` section, one field each
    (``SAMPLING_KEYS``); the config, its validation, the sampling study and the summaries all derive from it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    sampler: Literal[tuple(SAMPLERS)] = "ddim"  # type: ignore[valid-type]
    sampling_steps: int = Field(default=50, ge=1)
    eta: float = Field(default=0.0, ge=0.0, le=1.0)
    guidance_weight: float = 1.0
    clip: Literal[tuple(CLIPS)] = "static"  # type: ignore[valid-type]
    threshold_percentile: float = Field(default=0.995, gt=0.0, le=1.0)

    def settings(self) -> SamplerSettings:
        """Just the sampling settings (of a subclass such as the ``eval`` section)."""
        return SamplerSettings.model_validate(self.model_dump(include=set(SAMPLING_KEYS)))


SAMPLING_KEYS: tuple[str, ...] = tuple(SamplerSettings.model_fields)


@torch.no_grad()
def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_T: Tensor,
    prediction: Prediction = "eps",
    settings: SamplerSettings = SamplerSettings(),
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run the reverse process from x_T to x_0 with the chosen sampler; returns samples in [−1, 1]
    (clamped at the end whatever the clip mode). ``generator`` seeds the per-step noise."""
    timesteps = leading_timesteps(schedule.timesteps, settings.sampling_steps)
    return sample_from(model, schedule, x_T, timesteps, prediction, settings, y, generator)


@torch.no_grad()
def sample_from(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_start: Tensor,
    timesteps: list[int],
    prediction: Prediction = "eps",
    settings: SamplerSettings = SamplerSettings(),
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoise ``x_start``, a sample at step ``timesteps[-1]``, down to x_0 through the ascending
    ``timesteps`` (which start at 0); ``settings.sampling_steps`` is not used."""
    if not timesteps or timesteps[0] != 0 or any(b <= a for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"timesteps must ascend strictly from 0, got {timesteps}")
    schedule = schedule.to("cpu")  # per-step coefficients become Python floats: see schedules._gather
    return SAMPLERS[settings.sampler](model, schedule, x_start, timesteps, prediction, settings, y, generator)
