import pytest
import torch
from torch import nn

from diffusion_core.objectives import diffusion_loss, sample_timesteps, to_eps_and_x0, training_target
from diffusion_core.schedules import NoiseSchedule


class Oracle(nn.Module):
    """Returns the exact target for a known (x_0, ε) pair: a perfect predictor."""

    def __init__(self, schedule, prediction, x_0, eps):
        super().__init__()
        self.schedule, self.prediction, self.x_0, self.eps = schedule, prediction, x_0, eps

    def forward(self, x_t, t, y=None):
        return training_target(self.prediction, self.schedule, self.x_0, t, self.eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_perfect_predictor_has_zero_loss(prediction):
    schedule = NoiseSchedule.create("cosine", 100)
    gen = torch.Generator().manual_seed(0)
    x_0, eps = torch.randn(6, 3, 8, 8, generator=gen), torch.randn(6, 3, 8, 8, generator=gen)
    t = sample_timesteps(6, 100, gen, torch.device("cpu"))
    loss = diffusion_loss(Oracle(schedule, prediction, x_0, eps), schedule, x_0, t, eps, prediction)
    assert float(loss) < 1e-10
    wrong = diffusion_loss(Oracle(schedule, prediction, x_0, -eps), schedule, x_0, t, eps, "eps" if prediction != "eps" else "x0")
    assert float(wrong) > 0.1


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_output_conversion_recovers_eps_and_x0(prediction):
    schedule = NoiseSchedule.create("linear", 1000)
    gen = torch.Generator().manual_seed(2)
    x_0, eps = torch.randn(5, 1, 4, 4, generator=gen), torch.randn(5, 1, 4, 4, generator=gen)
    t = torch.tensor([0, 10, 300, 700, 950])
    x_t = schedule.q_sample(x_0, t, eps)
    eps_hat, x0_hat = to_eps_and_x0(prediction, schedule, x_t, t, training_target(prediction, schedule, x_0, t, eps))
    torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(x0_hat, x_0, atol=2e-2, rtol=1e-2)


def test_timesteps_uniform_and_respect_minimum():
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(50_000, 10, gen, torch.device("cpu"), t_min=1)
    assert int(t.min()) == 1 and int(t.max()) == 9
    counts = torch.bincount(t, minlength=10)[1:].float()
    assert float(counts.std() / counts.mean()) < 0.05


@pytest.mark.slow
def test_trainer_draws_x0_timesteps_from_seed_001_range():
    """diffusion.min_timestep = 1 is seed 001's eq. 6, t ~ U{2..T} (1-based): the model never sees code step 0."""
    from helpers import tiny_config

    from diffusion_core.trainer import Trainer

    cfg = tiny_config(diffusion={"prediction": "x0", "min_timestep": 1, "timesteps": 10}, train={"max_steps": 20, "batch_size": 16})
    trainer = Trainer(cfg, device="cpu")
    seen: list[int] = []
    trainer.model.register_forward_hook(lambda module, args, output: seen.extend(args[1].tolist()))
    trainer.train_until(20)
    assert set(seen) == set(range(1, 10))
