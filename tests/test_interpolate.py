"""Interpolations (seeds 003 and 004): slerp, the DDIM noise grid, x_t-space mixing of real images, the CLI."""
import math

import pytest
import torch
from helpers import ema_model, tiny_config
from PIL import Image
from torch import nn

from diffusion_core.checkpoint import save_model
from diffusion_core.interpolate import denoising_timesteps, main, noise_interpolation, slerp, xt_interpolation
from diffusion_core.samplers import SamplerSettings, sample
from diffusion_core.schedules import NoiseSchedule
from diffusion_core.trainer import Trainer


def test_slerp_follows_the_great_circle_between_the_endpoints():
    gen = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(3, 8, 8, generator=gen), torch.randn(3, 8, 8, generator=gen)
    alphas = torch.linspace(0, 1, 7)
    path = slerp(z_a, z_b, alphas)
    assert path.shape == (7, 3, 8, 8)
    torch.testing.assert_close(path[0], z_a)
    torch.testing.assert_close(path[-1], z_b)

    def angle(u, v):
        return math.acos(float((u.flatten() @ v.flatten()) / (u.norm() * v.norm())))

    unit_a, unit_b = z_a / z_a.norm(), z_b / z_b.norm()
    theta = angle(unit_a, unit_b)
    on_sphere = slerp(unit_a, unit_b, alphas)
    for alpha, z in zip(alphas.tolist(), on_sphere):
        assert angle(unit_a, z) == pytest.approx(alpha * theta, abs=1e-4)
        assert angle(z, unit_b) == pytest.approx((1 - alpha) * theta, abs=1e-4)
    torch.testing.assert_close(on_sphere.flatten(1).norm(dim=1), torch.ones(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(slerp(z_a, z_a, alphas), z_a.expand(7, -1, -1, -1))


class ScaledEps(nn.Module):
    null_class = None

    def forward(self, x_t, t, y=None):
        return 0.1 * x_t


def test_noise_grid_rows_decode_their_endpoint_noises_with_deterministic_ddim():
    schedule = NoiseSchedule.create("cosine", 100)
    grid = noise_interpolation(ScaledEps(), schedule, "eps", (1, 4, 4), rows=2, cols=5, steps=10, generator=torch.Generator().manual_seed(3))
    again = noise_interpolation(ScaledEps(), schedule, "eps", (1, 4, 4), rows=2, cols=5, steps=10, generator=torch.Generator().manual_seed(3))
    assert grid.shape == (10, 1, 4, 4) and torch.equal(grid, again)
    gen = torch.Generator().manual_seed(3)
    z = torch.stack([torch.randn(1, 4, 4, generator=gen) for _ in range(4)])  # z_a, z_b of row 0, then of row 1
    ends = sample(ScaledEps(), schedule, z, "eps", SamplerSettings(sampler="ddim", sampling_steps=10, eta=0.0, clip="static"))
    torch.testing.assert_close(grid[[0, 4, 5, 9]], ends, atol=1e-5, rtol=0)
    assert not torch.allclose(grid[2], grid[0]) and not torch.allclose(grid[2], grid[4])


class PredictsItsInput(nn.Module):
    """An x_0-predictor that returns x_t: decoding from t = 0 gives back (almost) the mixed x̄_0."""

    null_class = None

    def forward(self, x_t, t, y=None):
        return x_t


def test_xt_interpolation_mixes_the_diffused_images_and_frames_each_row():
    schedule = NoiseSchedule.create("linear", 1000)
    gen = torch.Generator().manual_seed(1)
    x_a, x_b = torch.rand(2, 1, 4, 4, generator=gen) - 0.5, 0.5 * torch.rand(2, 1, 4, 4, generator=gen) + 0.2
    out = xt_interpolation(PredictsItsInput(), schedule, "x0", x_a, x_b, t=0, cols=5, steps=10, generator=gen)
    assert out.shape == (2 * 7, 1, 4, 4)
    rows = out.reshape(2, 7, 1, 4, 4)
    torch.testing.assert_close(rows[:, 0], x_a)
    torch.testing.assert_close(rows[:, -1], x_b)
    for j, lam in enumerate(torch.linspace(0, 1, 5).tolist()):
        # x_0 of step 0 carries √β_1 = 0.01 noise
        torch.testing.assert_close(rows[:, j + 1], (1 - lam) * x_a + lam * x_b, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="t must be in 0..999"):
        xt_interpolation(PredictsItsInput(), schedule, "x0", x_a, x_b, t=1000, cols=5, steps=10, generator=gen)


def test_denoising_timesteps_run_from_zero_to_t():
    assert denoising_timesteps(500, 10) == list(range(0, 501, 50))
    assert denoising_timesteps(3, 10) == [0, 1, 2, 3]
    assert denoising_timesteps(0, 10) == [0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trainer checkpoint and a model file (a run's or sweep trial's best) of a tiny learned-variance digits model."""
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_config(diffusion={"timesteps": 50, "learn_sigma": True}, train={"max_steps": 2}, eval={"sampling_steps": 5})
    trainer = Trainer(cfg, device="cpu")
    trainer.train_until(2)
    trainer.save_checkpoint(folder / "checkpoint_last.pt")
    save_model(folder / "checkpoint_best.pt", ema_model(trainer).state_dict(), cfg, {"step": 2, "fid": 1.0})
    return folder


@pytest.mark.parametrize("name", ["checkpoint_last.pt", "checkpoint_best.pt"])
def test_cli_writes_both_grids_from_a_trainer_or_sweep_checkpoint(checkpoints, tmp_path, name):
    out, real = tmp_path / "grid.png", tmp_path / "real.png"
    code = main([str(checkpoints / name), "--out", str(out), "--rows", "2", "--cols", "3", "--real-out", str(real),
                 "--pairs", "2", "--t", "20", "--steps", "4"])
    assert code == 0
    assert Image.open(out).size == (3 * 9 + 1, 2 * 9 + 1), "2 rows x 3 columns of 8x8 digits, 1-pixel padding"
    assert Image.open(real).size == (5 * 9 + 1, 2 * 9 + 1), "each row framed by its two source images"


def test_cli_errors_are_one_line_with_non_zero_exit(checkpoints, tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main([str(missing), "--out", str(tmp_path / "g.png")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {missing}: checkpoint file not found"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main([str(corrupt), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {corrupt}: corrupt or unreadable checkpoint") and err.count("\n") == 1
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main([str(foreign), "--out", str(tmp_path / "g.png")]) == 1
    assert "written by an older diffusion-sweep (no format version" in capsys.readouterr().err
    assert main([str(checkpoints / "checkpoint_best.pt"), "--out", str(tmp_path / "g.png"), "--real-out", str(tmp_path / "r.png"), "--t", "50"]) == 1
    assert "--t 50: must be in 0..49" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()
