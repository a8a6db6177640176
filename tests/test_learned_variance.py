"""Learned Σθ and the hybrid loss (improved DDPM eqs. 15-16) checked against closed forms."""
import math

import pytest
import torch
from helpers import ema_model, tiny_config
from torch import nn
from torch.distributions import Normal, kl_divergence

from diffusion_core.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    normal_kl,
    vb_terms_bpd,
)
from diffusion_core.objectives import diffusion_loss
from diffusion_core.samplers import SamplerSettings, guided_output, sample, sample_from
from diffusion_core.schedules import NoiseSchedule
from diffusion_core.trainer import Trainer
from diffusion_core.unet import build_unet


def test_normal_kl_equals_the_closed_form_gaussian_kl():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    # by hand: log(σ2/σ1) + (σ1² + (μ1 − μ2)²) / (2σ2²) − ½
    by_hand = 0.5 * (lv2 - lv1) + (lv1.exp() + (m1 - m2) ** 2) / (2 * lv2.exp()) - 0.5
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), by_hand)
    assert float(normal_kl(m1, lv1, m1, lv1).abs().max()) < 1e-12


def test_discretized_likelihood_is_the_gaussian_mass_of_each_pixel_bin():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    mean, log_scale = torch.tensor(0.13, dtype=torch.float64), torch.tensor(math.log(0.2), dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(levels, mean.expand(256), log_scale.expand(256))
    normal = Normal(mean, log_scale.exp())
    upper = torch.where(levels > 0.999, torch.ones(256, dtype=torch.float64), normal.cdf(levels + 1 / 255))
    lower = torch.where(levels < -0.999, torch.zeros(256, dtype=torch.float64), normal.cdf(levels - 1 / 255))
    exact = upper - lower
    assert float((log_p.exp() - exact).abs().max()) < 1e-3, "the tanh CDF approximation is within 1e-3"
    middle = exact > 1e-3
    torch.testing.assert_close(log_p[middle], exact[middle].log(), atol=0.02, rtol=0)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9, rtol=0)
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    assert float((approx_standard_normal_cdf(x) - Normal(0.0, 1.0).cdf(x)).abs().max()) < 5e-4


def test_learned_sigma_interpolates_in_log_space_between_its_bounds():
    schedule = NoiseSchedule.create("cosine", 200)
    t = torch.arange(200)
    beta, beta_tilde = schedule.betas, schedule.posterior_log_variance_clipped.exp()
    for out in torch.linspace(-1, 1, 9, dtype=torch.float64):
        sigma = learned_log_variance(schedule, t, torch.full((200, 1, 1, 1), float(out), dtype=torch.float64)).exp().flatten()
        assert bool((sigma >= beta_tilde * (1 - 1e-9)).all() and (sigma <= beta * (1 + 1e-9)).all())
        v = (out + 1) / 2  # eq. 15: Σ = exp(v log β + (1 − v) log β̃)
        torch.testing.assert_close(sigma, torch.exp(v * beta.log() + (1 - v) * beta_tilde.log()))
    low = learned_log_variance(schedule, t, torch.full((200, 1, 1, 1), -1.0, dtype=torch.float64)).flatten()
    high = learned_log_variance(schedule, t, torch.full((200, 1, 1, 1), 1.0, dtype=torch.float64)).flatten()
    torch.testing.assert_close(low, beta_tilde.log())
    torch.testing.assert_close(high, beta.log())


def test_vlb_term_is_the_kl_for_t_above_zero_and_the_discretized_decoder_at_zero():
    schedule = NoiseSchedule.create("linear", 100)
    gen = torch.Generator().manual_seed(1)
    x_0 = (torch.randint(0, 256, (4, 1, 4, 4), generator=gen).double() / 127.5 - 1.0)
    eps = torch.randn(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    pred_x0 = x_0 + 0.1 * torch.randn(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 99])
    x_t = schedule.q_sample(x_0, t, eps)
    log_var = torch.full_like(x_0, -5.0)
    bpd = vb_terms_bpd(schedule, x_0, x_t, t, pred_x0, log_var)
    true_mean, _, true_log_var = schedule.q_posterior(x_0, x_t, t)
    model_mean, _, _ = schedule.q_posterior(pred_x0, x_t, t)
    kl = kl_divergence(Normal(true_mean, (0.5 * true_log_var).exp()), Normal(model_mean, (0.5 * log_var).exp()))
    torch.testing.assert_close(bpd[1:], kl[1:].mean(dim=(1, 2, 3)) / math.log(2))
    decoder = -discretized_gaussian_log_likelihood(x_0[:1], model_mean[:1], 0.5 * log_var[:1]).mean() / math.log(2)
    torch.testing.assert_close(bpd[0], decoder)
    assert not torch.isclose(bpd[0], kl[0].mean() / math.log(2))


class Fixed(nn.Module):
    """Returns a fixed 2C-channel output and keeps it as a parameter, to inspect gradients."""

    null_class = None

    def __init__(self, output):
        super().__init__()
        self.output = nn.Parameter(output)

    def forward(self, x_t, t, y=None):
        return self.output


def test_hybrid_loss_stops_the_mean_gradient_in_the_vlb_term():
    schedule = NoiseSchedule.create("cosine", 100)
    gen = torch.Generator().manual_seed(2)
    x_0, eps = torch.rand(3, 2, 4, 4, generator=gen) * 2 - 1, torch.randn(3, 2, 4, 4, generator=gen)
    t = torch.tensor([0, 40, 90])
    out = torch.cat([eps + 0.3 * torch.randn(3, 2, 4, 4, generator=gen), torch.zeros(3, 2, 4, 4)], dim=1)
    hybrid, simple = Fixed(out.clone()), Fixed(out[:, :2].clone())
    loss_h = diffusion_loss(hybrid, schedule, x_0, t, eps, "eps", vlb_weight=0.001)
    loss_s = diffusion_loss(simple, schedule, x_0, t, eps, "eps")
    loss_h.backward()
    loss_s.backward()
    torch.testing.assert_close(hybrid.output.grad[:, :2], simple.output.grad, msg="L_vlb must not move the mean")
    assert float(hybrid.output.grad[:, 2:].abs().sum()) > 0, "L_vlb trains Σθ"
    x_t = schedule.q_sample(x_0, t, eps)
    pred_x0 = schedule.predict_x0_from_eps(x_t, t, out[:, :2])
    vlb = vb_terms_bpd(schedule, x_0, x_t, t, pred_x0, learned_log_variance(schedule, t, out[:, 2:])).mean()
    torch.testing.assert_close(loss_h - loss_s, 0.001 * 100 * vlb, rtol=1e-4, atol=1e-6)


class ConstantVariance(nn.Module):
    """An oracle for the single point 0 whose Σθ output is a constant ``v_out``; records its inputs."""

    null_class = None

    def __init__(self, schedule, v_out):
        super().__init__()
        self.schedule, self.v_out, self.seen = schedule, v_out, {}

    def forward(self, x_t, t, y=None):
        self.seen[int(t[0])] = x_t.clone()
        eps = self.schedule.predict_eps_from_x0(x_t, t, torch.zeros_like(x_t))
        return torch.cat([eps, torch.full_like(x_t, self.v_out)], dim=1)


@pytest.mark.parametrize("v_out", [-1.0, 0.5, 1.0])
def test_respaced_ddpm_uses_the_learned_variance_relative_to_the_respaced_schedule(v_out):
    """Two DDPM steps 500 → 0 from x = 0 with x̂_0 = 0: the step's mean is 0, so x_0's input is σ z
    with log σ² = v log β_1 + (1 − v) log β̃_1 of the respaced schedule (not of the full one)."""
    schedule = NoiseSchedule.create("linear", 1000)
    timesteps = [0, 500]
    respaced = schedule.respace(timesteps)
    model = ConstantVariance(schedule, v_out)
    settings = SamplerSettings(sampler="ddpm", clip="none")
    sample_from(model, schedule, torch.zeros(20000, 1, 1, 1), timesteps, "eps", settings, generator=torch.Generator().manual_seed(0))
    v = (v_out + 1) / 2
    expected = math.exp(0.5 * (v * math.log(respaced.betas[1]) + (1 - v) * math.log(respaced.posterior_variance[1])))
    assert float(model.seen[0].std()) == pytest.approx(expected, rel=0.03)
    full = math.exp(0.5 * (v * math.log(schedule.betas[500]) + (1 - v) * float(schedule.posterior_log_variance_clipped[500])))
    assert abs(expected - full) > 0.2 * expected, "the respaced tables must differ from the full schedule's"


def test_learn_sigma_builds_2c_outputs_trains_and_samples():
    cfg = tiny_config(diffusion={"learn_sigma": True, "timesteps": 50}, train={"max_steps": 3}, eval={"sampler": "ddpm"})
    assert build_unet(cfg).out_channels == 2 * cfg.data.channels
    trainer = Trainer(cfg, device="cpu")
    losses = trainer.train_until(3)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for kind in ("ddpm", "ddim"):
        out = sample(ema_model(trainer), trainer.schedule, x_T, "eps", SamplerSettings(sampler=kind, sampling_steps=5))
        assert out.shape == x_T.shape and bool(torch.isfinite(out).all())


class LabelledSigma(nn.Module):
    """Mean channels and Σθ channels both depend on the label; the null class is 10."""

    null_class = 10

    def forward(self, x_t, t, y=None):
        y = torch.full((len(x_t),), self.null_class) if y is None else y
        shift = y.float().reshape(-1, 1, 1, 1) / 10
        return torch.cat([0.1 * x_t + shift, torch.zeros_like(x_t) + shift], dim=1)


def test_guidance_mixes_the_mean_channels_and_keeps_the_conditional_sigma():
    x_t, t, y = torch.randn(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), torch.tensor([2, 4, 6])
    out = guided_output(LabelledSigma(), x_t, t, y, 3.0)
    conditional, unconditional = LabelledSigma()(x_t, t, y), LabelledSigma()(x_t, t, torch.full_like(y, 10))
    torch.testing.assert_close(out[:, :1], 3.0 * conditional[:, :1] - 2.0 * unconditional[:, :1])
    torch.testing.assert_close(out[:, 1:], conditional[:, 1:])


def test_vlb_gradient_drives_sigma_to_the_true_posterior_variance_when_the_mean_is_exact():
    """With μθ = μ̃_t, KL(q ‖ p) is minimal at Σθ = β̃_t, i.e. at output −1 (v = 0)."""
    schedule = NoiseSchedule.create("linear", 100)
    gen = torch.Generator().manual_seed(4)
    x_0 = torch.rand(4, 1, 2, 2, generator=gen) * 2 - 1
    t = torch.tensor([1, 2, 4, 8])  # where β̃_t and β_t differ enough to matter
    x_t = schedule.q_sample(x_0, t, torch.randn(4, 1, 2, 2, generator=gen))
    var_output = torch.zeros(4, 1, 2, 2, requires_grad=True)
    optimizer = torch.optim.Adam([var_output], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        vb_terms_bpd(schedule, x_0, x_t, t, x_0, learned_log_variance(schedule, t, var_output)).sum().backward()
        optimizer.step()
    torch.testing.assert_close(var_output.detach(), torch.full_like(var_output, -1.0), atol=0.02, rtol=0)
