import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_core.schedules import NoiseSchedule


@pytest.mark.parametrize("timesteps", [1000, 250])
def test_linear_alphas_cumprod_match_diffusers(timesteps):
    scale = 1000 / timesteps
    ref = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear", beta_start=1e-4 * scale, beta_end=0.02 * scale)
    ours = NoiseSchedule.create("linear", timesteps).alphas_cumprod
    torch.testing.assert_close(ours.float(), ref.alphas_cumprod, atol=1e-6, rtol=0)


@pytest.mark.parametrize("timesteps", [1000, 4000, 50])
def test_cosine_alphas_cumprod_match_diffusers(timesteps):
    ref = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2")
    schedule = NoiseSchedule.create("cosine", timesteps)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6, rtol=0)
    assert float(schedule.betas.max()) <= 0.999


def test_linear_schedule_endpoints_at_1000():
    betas = NoiseSchedule.create("linear", 1000).betas
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_empirical_moments_match_closed_form(kind):
    schedule = NoiseSchedule.create(kind, 200)
    x_0 = torch.tensor([0.7, -0.3, 0.1], dtype=torch.float64)
    t = torch.tensor([120])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    x_t = schedule.q_sample(x_0.expand(200_000, 3), t.expand(200_000), noise)
    mean, variance = schedule.q_mean_variance(x_0[None], t)
    torch.testing.assert_close(x_t.mean(0), mean[0], atol=1e-2, rtol=0)
    torch.testing.assert_close(x_t.var(0), variance[0].expand(3), atol=0, rtol=0.015)


def test_posterior_matches_closed_form_gaussian_conditioning():
    """q(x_{t-1}|x_t,x_0) from Bayes: q(x_t|x_{t-1}) q(x_{t-1}|x_0), both Gaussian (scalar case)."""
    schedule = NoiseSchedule.create("cosine", 100)
    a, b = schedule.alphas, schedule.betas
    abar = schedule.alphas_cumprod
    for step in [1, 10, 57, 99]:
        x_0, x_t = torch.tensor([[0.4]], dtype=torch.float64), torch.tensor([[-1.2]], dtype=torch.float64)
        prior_mean, prior_var = abar[step - 1].sqrt() * x_0, 1 - abar[step - 1]
        lik_precision = a[step] / b[step]
        precision = 1 / prior_var + lik_precision
        expected_var = 1 / precision
        expected_mean = expected_var * (prior_mean / prior_var + a[step].sqrt() * x_t / b[step])
        mean, var, log_var = schedule.q_posterior(x_0, x_t, torch.tensor([step]))
        torch.testing.assert_close(mean, expected_mean)
        torch.testing.assert_close(var.flatten(), expected_var.reshape(1))
        torch.testing.assert_close(log_var.exp().flatten(), expected_var.reshape(1))


def test_conversions_invert_each_other():
    schedule = NoiseSchedule.create("linear", 1000)
    gen = torch.Generator().manual_seed(1)
    x_0, eps = torch.randn(8, 1, 4, 4, generator=gen), torch.randn(8, 1, 4, 4, generator=gen)
    t = torch.randint(0, 1000, (8,), generator=gen)
    x_t = schedule.q_sample(x_0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x_0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x_0), eps, atol=1e-3, rtol=1e-3)
    v = schedule.velocity(x_0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_v(x_t, t, v), x_0, atol=1e-4, rtol=1e-4)


def test_respaced_schedule_keeps_alphas_cumprod_on_the_subsequence():
    schedule = NoiseSchedule.create("linear", 1000)
    steps = list(range(0, 1000, 20))
    respaced = schedule.respace(steps)
    torch.testing.assert_close(respaced.alphas_cumprod, schedule.alphas_cumprod[steps])


@pytest.mark.parametrize("bad", [1, 0])
def test_too_few_timesteps_rejected(bad):
    with pytest.raises(ValueError, match="timesteps"):
        NoiseSchedule.create("linear", bad)


@pytest.mark.parametrize("step", [0, 1, 57, 99])
def test_a_step_shared_by_the_batch_gives_the_per_sample_results(step):
    """The samplers pass one int step for the whole batch (float coefficients); training passes a tensor."""
    schedule = NoiseSchedule.create("cosine", 100)
    gen = torch.Generator().manual_seed(step)
    x_0, x_t, eps = (torch.randn(3, 2, 4, 4, generator=gen) for _ in range(3))
    per_sample = torch.full((3,), step)
    for method in (schedule.predict_x0_from_eps, schedule.predict_eps_from_x0, schedule.predict_x0_from_v, schedule.velocity):
        torch.testing.assert_close(method(x_t, step, eps), method(x_t, per_sample, eps))
    shared, tensor = schedule.q_posterior(x_0, x_t, step), schedule.q_posterior(x_0, x_t, per_sample)
    assert isinstance(shared[1], float) and isinstance(shared[2], float)
    torch.testing.assert_close(shared[0], tensor[0])
    assert shared[1] == pytest.approx(float(tensor[1][0])) and shared[2] == pytest.approx(float(tensor[2][0]))
