"""Learned reverse-process variance and the variational bound (Nichol & Dhariwal, 2021, "Improved DDPM").

Names follow openai/improved-diffusion (``losses.py`` and ``gaussian_diffusion.py``), one function per
equation. Σθ interpolates in log space between the two extreme choices β_t and β̃_t (eq. 15); the
network is trained with L_hybrid = L_simple + λ·L_vlb (eq. 16), the mean stopped in the L_vlb term.
L_vlb is in bits per dimension; its t = 0 term is the discretized Gaussian decoder of DDPM §3.3.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_core.schedules import NoiseSchedule, Step, _gather


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(μ1, e^{logvar1}) ‖ N(μ2, e^{logvar2})) per element, in nats:
    ½ (−1 + logvar2 − logvar1 + e^{logvar1 − logvar2} + (μ1 − μ2)² e^{−logvar2})."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation improved-diffusion uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) per element for data x in [−1, 1] quantised to 256 levels (DDPM eq. 13): the Gaussian
    mass of the bin [x − 1/255, x + 1/255], the edge bins extended to ∓∞."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def learned_log_variance(schedule: NoiseSchedule, t: Step, var_output: Tensor) -> Tensor:
    """log Σθ = v log β_t + (1 − v) log β̃_t (improved DDPM eq. 15), with v = (output + 1)/2 as in
    improved-diffusion, so an output in [−1, 1] gives β̃_t ≤ Σθ ≤ β_t. As in the paper, v is not
    clamped. ``schedule`` must be the one the step t belongs to (the respaced one when sampling)."""
    min_log = _gather(schedule.posterior_log_variance_clipped, t, var_output)
    max_log = _gather(torch.log(schedule.betas), t, var_output)
    frac = (var_output + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def vb_terms_bpd(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: Tensor, pred_x0: Tensor, model_log_variance: Tensor) -> Tensor:
    """The term L_t of L_vlb (DDPM eq. 5) per sample, in bits per dimension, for p = N(μθ, Σθ) with
    μθ = μ̃_t(x_t, x̂_0): KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)) for t > 0 (code index), and
    the decoder NLL −log p(x_0 | x_1) under the discretized Gaussian at t = 0."""
    true_mean, _, true_log_variance = schedule.q_posterior(x_0, x_t, t)
    model_mean, _, _ = schedule.q_posterior(pred_x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / math.log(2.0)
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x_0, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
    return torch.where(t.to(kl.device) == 0, decoder_nll, kl)


def hybrid_vlb_term(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: Tensor, pred_x0: Tensor, var_output: Tensor, vlb_weight: float) -> Tensor:
    """λ·L_vlb of improved DDPM eq. 16, L_vlb = Σ_t L_t estimated as T·L_t at the sampled t, averaged
    over the batch. ``pred_x0`` must be computed from the detached mean output (stop-gradient on μθ),
    so only Σθ learns from this term."""
    log_variance = learned_log_variance(schedule, t, var_output)
    return vlb_weight * schedule.timesteps * vb_terms_bpd(schedule, x_0, x_t, t, pred_x0, log_variance).mean()
