import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from diffusion_core.samplers import SamplerSettings, ddim_step, dynamic_threshold, leading_timesteps, predict, sample
from diffusion_core.schedules import NoiseSchedule


class OnePointOracle(nn.Module):
    """The exact ε-predictor for a dataset holding the single point ``x_star``."""

    null_class = None

    def __init__(self, schedule, x_star):
        super().__init__()
        self.schedule, self.x_star = schedule, x_star

    def forward(self, x_t, t, y=None):
        return self.schedule.predict_eps_from_x0(x_t, t, self.x_star.expand_as(x_t))


class LabelShift(nn.Module):
    """A toy conditional model: output depends on the label, with a null class."""

    null_class = 10

    def forward(self, x_t, t, y=None):
        y = torch.full((len(x_t),), self.null_class) if y is None else y
        return 0.1 * x_t + y.float().reshape(-1, 1, 1, 1) / 10


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_step_equals_diffusers(eta, kind):
    T, S = 1000, 50
    schedule = NoiseSchedule.create(kind, T)
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear" if kind == "linear" else "squaredcos_cap_v2",
                        clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(S)
    assert sorted(int(t) for t in ref.timesteps) == leading_timesteps(T, S)
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 8, 8, generator=gen)
    output = torch.randn(2, 3, 8, 8, generator=gen)
    noise = torch.randn(2, 3, 8, 8, generator=gen)
    settings = SamplerSettings(sampler="ddim", sampling_steps=S, eta=eta, clip="none")
    abar = schedule.alphas_cumprod
    for t_int in [980, 500, 20, 0]:
        expected = ref.step(output, t_int, x_t, eta=eta, variance_noise=noise).prev_sample

        class Fixed(nn.Module):
            null_class = None

            def forward(self, x, tt, y=None):
                return output

        eps, x_0, _ = predict(Fixed(), schedule, x_t, t_int, "eps", settings)
        prev = abar[t_int - T // S].item() if t_int - T // S >= 0 else 1.0
        ours = ddim_step(x_t, eps, x_0, abar[t_int].item(), prev, eta, noise)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_eta0_with_oracle_returns_the_single_data_point(prediction):
    schedule = NoiseSchedule.create("cosine", 1000)
    gen = torch.Generator().manual_seed(3)
    x_star = torch.rand(1, 1, 8, 8, generator=gen) * 1.6 - 0.8
    oracle = OnePointOracle(schedule, x_star)

    class Reparam(nn.Module):
        null_class = None

        def forward(self, x_t, t, y=None):
            eps = oracle(x_t, t)
            if prediction == "eps":
                return eps
            x_0 = schedule.predict_x0_from_eps(x_t, t, eps)
            return x_0 if prediction == "x0" else schedule.velocity(x_0, t, eps)

    x_T = torch.randn(4, 1, 8, 8, generator=gen)
    out = sample(Reparam(), schedule, x_T, prediction, SamplerSettings(sampler="ddim", sampling_steps=20, eta=0.0, clip="none"))
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-4, rtol=0)


def test_ddpm_with_oracle_converges_and_is_seeded():
    schedule = NoiseSchedule.create("linear", 1000)
    x_star = torch.full((1, 1, 4, 4), 0.5)
    oracle = OnePointOracle(schedule, x_star)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = SamplerSettings(sampler="ddpm", sampling_steps=100, clip="static")
    a = sample(oracle, schedule, x_T, "eps", settings, generator=torch.Generator().manual_seed(5))
    b = sample(oracle, schedule, x_T, "eps", settings, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, x_star.expand_as(a), atol=1e-3, rtol=0)


def test_guidance_weight_zero_is_unconditional_and_one_is_conditional():
    schedule = NoiseSchedule.create("linear", 100)
    model = LabelShift()
    x_T = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 3, 4])
    run = lambda w, labels: sample(model, schedule, x_T, "eps", SamplerSettings(sampling_steps=10, guidance_weight=w, clip="none"), y=labels)
    torch.testing.assert_close(run(0.0, y), run(1.0, torch.full_like(y, 10)))
    assert not torch.allclose(run(1.0, y), run(0.0, y))
    guided = run(3.0, y)
    assert not torch.allclose(guided, run(1.0, y))


def test_dynamic_threshold_scales_by_percentile_and_keeps_in_range():
    x = torch.linspace(-3, 3, 101).reshape(1, 1, 1, 101)
    out = dynamic_threshold(x, 0.9)
    s = torch.quantile(x.abs().flatten(), 0.9)
    torch.testing.assert_close(out, x.clamp(-s, s) / s)
    assert float(out.abs().max()) <= 1.0
    small = torch.full((1, 1, 2, 2), 0.5)
    torch.testing.assert_close(dynamic_threshold(small, 0.99), small)


def test_leading_timesteps_rejects_too_many_steps():
    with pytest.raises(ValueError):
        leading_timesteps(10, 11)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_a_single_sampling_step_jumps_straight_to_the_predicted_x0(kind):
    """One step: x̂_0 from x_T at the first leading timestep, with no noise added (β̃ has no second entry then)."""
    schedule = NoiseSchedule.create("linear", 1000)
    x_star = torch.full((1, 1, 4, 4), 0.5)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample(OnePointOracle(schedule, x_star), schedule, x_T, "eps", SamplerSettings(sampler=kind, sampling_steps=1, clip="static"),
                 generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-4, rtol=0)
    assert torch.isfinite(schedule.respace([0]).posterior_log_variance_clipped).all()
