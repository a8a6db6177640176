"""What the network predicts (ε, x_0 or v) and the training loss: L_simple (DDPM eq. 14), or with a
learned variance the hybrid L_simple + λ·L_vlb (improved DDPM eq. 16)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_core.losses import hybrid_vlb_term
from diffusion_core.schedules import NoiseSchedule, Step


@dataclass(frozen=True)
class Parameterisation:
    """What the network predicts: its regression target, and how its output becomes (ε̂, x̂_0)."""

    target: Callable[[NoiseSchedule, Tensor, Tensor, Tensor], Tensor]  # (schedule, x_0, t, ε) -> target
    to_eps_and_x0: Callable[[NoiseSchedule, Tensor, Step, Tensor], tuple[Tensor, Tensor]]  # (schedule, x_t, t, output)


def _v_to_eps_and_x0(schedule: NoiseSchedule, x_t: Tensor, t: Step, v: Tensor) -> tuple[Tensor, Tensor]:
    x_0 = schedule.predict_x0_from_v(x_t, t, v)
    return schedule.predict_eps_from_x0(x_t, t, x_0), x_0


PREDICTIONS: dict[str, Parameterisation] = {
    "eps": Parameterisation(lambda schedule, x_0, t, eps: eps,
                            lambda schedule, x_t, t, eps: (eps, schedule.predict_x0_from_eps(x_t, t, eps))),
    "x0": Parameterisation(lambda schedule, x_0, t, eps: x_0,
                           lambda schedule, x_t, t, x_0: (schedule.predict_eps_from_x0(x_t, t, x_0), x_0)),
    "v": Parameterisation(lambda schedule, x_0, t, eps: schedule.velocity(x_0, t, eps), _v_to_eps_and_x0),
}
"""``diffusion.prediction``: ε (DDPM), x_0, or v (Salimans & Ho, 2022) -> its parameterisation."""

Prediction = Literal[tuple(PREDICTIONS)]  # type: ignore[valid-type]


def training_target(prediction: Prediction, schedule: NoiseSchedule, x_0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The regression target of the network for the chosen parameterisation."""
    return PREDICTIONS[prediction].target(schedule, x_0, t, eps)


def to_eps_and_x0(prediction: Prediction, schedule: NoiseSchedule, x_t: Tensor, t: Step, output: Tensor) -> tuple[Tensor, Tensor]:
    """Convert a network output into the (ε̂, x̂_0) pair that the samplers use."""
    return PREDICTIONS[prediction].to_eps_and_x0(schedule, x_t, t, output)


def split_output(output: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
    """(prediction, variance output) of a network with 2C output channels (learned Σθ); (output, None) for C."""
    if output.shape[1] == 2 * channels:
        prediction, var_output = output.split(channels, dim=1)
        return prediction, var_output
    return output, None


def sample_timesteps(batch: int, timesteps: int, generator: torch.Generator, device: torch.device, t_min: int = 0) -> Tensor:
    """t ~ U{t_min, ..., T−1} (0-based); t_min = 1 gives seed 001's t ~ U{2..T}."""
    return torch.randint(t_min, timesteps, (batch,), generator=generator, device=device)


def diffusion_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_0: Tensor,
    t: Tensor,
    eps: Tensor,
    prediction: Prediction = "eps",
    y: Tensor | None = None,
    vlb_weight: float = 0.001,
) -> Tensor:
    """L_simple = E_{t, x_0, ε} ‖target − f_θ(x_t, t)‖² with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.

    When the model also outputs Σθ (2C channels), L_hybrid = L_simple + λ·L_vlb (improved DDPM
    eq. 16), with λ = ``vlb_weight`` and the mean stopped in the L_vlb term.
    """
    x_t = schedule.q_sample(x_0, t, eps)
    output, var_output = split_output(model(x_t, t, y), x_0.shape[1])
    target = training_target(prediction, schedule, x_0, t, eps)
    loss = F.mse_loss(output.float(), target.float())
    if var_output is None:
        return loss
    _, pred_x0 = to_eps_and_x0(prediction, schedule, x_t.float(), t, output.detach().float())
    return loss + hybrid_vlb_term(schedule, x_0.float(), x_t.float(), t, pred_x0, var_output.float(), vlb_weight)
