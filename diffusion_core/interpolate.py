"""Interpolations of a trained model (seeds 003 and 004): ``python -m diffusion_core.interpolate CHECKPOINT --out grid.png``.

* Noise grid (seed 004's "interpolating between points in the latent space", DDIM §5.3): each row
  spherically interpolates between two initial noises x_T, x'_T and decodes every point with
  deterministic DDIM (η = 0), so the row is a path through image space.
* Real images in x_t space (seed 003 §3.4, Ho et al. §4.3): diffuse two real images to step t,
  x_t, x'_t ~ q(x_t | x_0), interpolate x̄_t = (1 − λ) x_t + λ x'_t, and run the reverse process
  from t (deterministic DDIM, so every λ shares the same decoder). Each row is framed by its two
  source images.

Works on any checkpoint this project writes: a model file (``checkpoint_best.pt`` of a run, a sweep trial's
``checkpoints/checkpoint_best.pt``) or a trainer checkpoint (``checkpoint_last.pt``); the EMA weights and the run config travel inside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from diffusion_core.checkpoint import CheckpointError, load_model
from diffusion_core.config import ConfigError, DataConfig, RunConfig
from diffusion_core.data import DatasetError, load_images, to_unit_range
from diffusion_core.objectives import Prediction
from diffusion_core.samplers import SamplerSettings, sample, sample_from
from diffusion_core.schedules import NoiseSchedule, build_schedule

DDIM = SamplerSettings(sampler="ddim", eta=0.0, clip="static")


def slerp(z_a: Tensor, z_b: Tensor, alphas: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake, 1985), as DDIM §5.3 uses for initial noises:
    slerp(z_a, z_b; α) = sin((1 − α)θ)/sin θ · z_a + sin(αθ)/sin θ · z_b, θ = arccos(⟨z_a, z_b⟩ / ‖z_a‖‖z_b‖).
    ``z_a``, ``z_b``: one tensor each; ``alphas`` (K,) → (K, *z_a.shape)."""
    a, b = z_a.flatten().double(), z_b.flatten().double()
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1.0, 1.0))
    alphas = alphas.double().reshape(-1, *([1] * z_a.ndim))
    if float(theta.sin()) < 1e-6:
        return ((1 - alphas) * z_a.double() + alphas * z_b.double()).to(z_a.dtype)
    out = (torch.sin((1 - alphas) * theta) * z_a.double() + torch.sin(alphas * theta) * z_b.double()) / theta.sin()
    return out.to(z_a.dtype)


def noise_interpolation(
    model: nn.Module,
    schedule: NoiseSchedule,
    prediction: Prediction,
    shape: tuple[int, int, int],
    rows: int,
    cols: int,
    steps: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(rows·cols, C, H, W) images in [−1, 1]: row r decodes slerp(z_r, z'_r; α) for α = 0 … 1."""
    alphas = torch.linspace(0.0, 1.0, cols)
    x_T = torch.cat([slerp(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator), alphas) for _ in range(rows)])
    settings = DDIM.model_copy(update={"sampling_steps": min(steps, schedule.timesteps)})
    model.eval()
    return sample(model, schedule, x_T.to(device), prediction, settings).cpu()


def denoising_timesteps(t: int, steps: int) -> list[int]:
    """An ascending subsequence 0 … t of at most ``steps`` + 1 steps, for the reverse process from t."""
    return sorted({round(i * t / max(1, min(steps, t))) for i in range(min(steps, t) + 1)})


def xt_interpolation(
    model: nn.Module,
    schedule: NoiseSchedule,
    prediction: Prediction,
    x_a: Tensor,
    x_b: Tensor,
    t: int,
    cols: int,
    steps: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Seed 003's interpolation of real images: for each pair (x_a[i], x_b[i]) in [−1, 1], diffuse
    both to code step ``t``, mix x̄_t = (1 − λ) x_t + λ x'_t for λ = 0 … 1 and denoise from t.
    Returns (pairs·(cols + 2), C, H, W): each row x_a, the ``cols`` decoded points, x_b."""
    if not 0 <= t < schedule.timesteps:
        raise ValueError(f"t must be in 0..{schedule.timesteps - 1}, got {t}")
    steps_t = torch.full((len(x_a),), t, dtype=torch.long)
    x_t_a = schedule.q_sample(x_a, steps_t, torch.randn(x_a.shape, generator=generator))
    x_t_b = schedule.q_sample(x_b, steps_t, torch.randn(x_b.shape, generator=generator))
    lambdas = torch.linspace(0.0, 1.0, cols).reshape(1, cols, 1, 1, 1)
    mixed = ((1 - lambdas) * x_t_a[:, None] + lambdas * x_t_b[:, None]).flatten(0, 1)
    model.eval()
    decoded = sample_from(model, schedule, mixed.to(device), denoising_timesteps(t, steps), prediction, DDIM).cpu()
    rows = decoded.reshape(len(x_a), cols, *x_a.shape[1:])
    return torch.cat([x_a[:, None], rows, x_b[:, None]], dim=1).flatten(0, 1)


def real_pairs(data: DataConfig, pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """``pairs`` pairs of distinct test-split images in [−1, 1], chosen by ``seed``."""
    images = load_images(data.model_copy(update={"subset": None}), train=False).images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: 2 * pairs]
    picked = to_unit_range(images[chosen])
    return picked[:pairs], picked[pairs:]


def write_grid(images: Tensor, nrow: int, out: str | Path | BinaryIO) -> None:
    """Save [−1, 1] images as one PNG grid, ``nrow`` images per row."""
    save_image(make_grid((images + 1) / 2, nrow=nrow, padding=1), out, format="png")


def interpolation_grids(
    model: nn.Module, cfg: RunConfig, rows: int = 4, cols: int = 8, steps: int | None = None, t: int | None = None,
    pairs: int = 0, seed: int = 0, device: torch.device | str = "cpu",
) -> dict[str, tuple[Tensor, int]]:
    """The noise grid and, when ``pairs`` > 0, the x_t-space grid of real images: name → (images, per row).
    ``t`` defaults to T/2, ``steps`` to ``eval.sampling_steps``."""
    schedule = build_schedule(cfg.diffusion).to(device)
    steps = steps or cfg.eval.sampling_steps
    shape = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    generator = torch.Generator().manual_seed(seed)
    grids = {"noise_slerp": (noise_interpolation(model, schedule, cfg.diffusion.prediction, shape, rows, cols, steps, generator, device), cols)}
    if pairs > 0:
        x_a, x_b = real_pairs(cfg.data, pairs, seed)
        t = schedule.timesteps // 2 if t is None else t
        grids["xt_real"] = (xt_interpolation(model, schedule, cfg.diffusion.prediction, x_a, x_b, t, cols, steps, generator, device), cols + 2)
    return grids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffusion_core.interpolate", description=__doc__.splitlines()[0].split(":")[0])
    p.add_argument("checkpoint", help="checkpoint_best.pt (a model file: of a run, or a sweep trial's) or checkpoint_last.pt (a trainer checkpoint)")
    p.add_argument("--out", required=True, help="PNG of the noise-slerp grid (rows x cols)")
    p.add_argument("--rows", type=int, default=4, help="pairs of initial noises (default 4)")
    p.add_argument("--cols", type=int, default=8, help="interpolation points per row (default 8)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's eval.sampling_steps)")
    p.add_argument("--real-out", help="also write seed 003's x_t-space interpolation of real test images here")
    p.add_argument("--pairs", type=int, default=4, help="pairs of real images for --real-out (default 4)")
    p.add_argument("--t", type=int, help="0-based diffusion step for --real-out (default T/2)")
    p.add_argument("--data-root", help="override the checkpoint's data.root for --real-out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if min(args.rows, args.cols, args.pairs) < 1 or (args.steps is not None and args.steps < 1):
        p.error("--rows, --cols, --pairs and --steps must be >= 1")
    try:
        model, cfg, _ = load_model(args.checkpoint, args.device)
        if args.data_root:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": args.data_root, "download": False})})
        if args.t is not None and not 0 <= args.t < cfg.diffusion.timesteps:
            raise ConfigError(f"--t {args.t}: must be in 0..{cfg.diffusion.timesteps - 1} (diffusion.timesteps of the checkpoint)")
        grids = interpolation_grids(model, cfg, args.rows, args.cols, args.steps, args.t,
                                    args.pairs if args.real_out else 0, args.seed, args.device)
        for name, out in (("noise_slerp", args.out), ("xt_real", args.real_out)):
            if name in grids:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                write_grid(*grids[name], out)
                print(f"wrote {out}")
    except (CheckpointError, DatasetError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
