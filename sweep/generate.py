"""Images from a model file, the function behind the registered MLflow model's ``predict`` and ``python -m
sweep.sample``: N samples for a seed, in batches whose noises depend only on (seed, batch index), so the same seed
gives the same images and an interrupted run redraws exactly the batches it lacks.

A model file carries everything needed: the network's weights, its run config (architecture, noise schedule,
prediction target) and the sampling settings in its ``eval`` section (for a registered model: the sweep's best).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diffusion_core.checkpoint import load_model
from diffusion_core.config import RunConfig
from diffusion_core.data import to_uint8
from diffusion_core.evaluate import sampler_settings
from diffusion_core.samplers import sample
from diffusion_core.schedules import NoiseSchedule, build_schedule
from diffusion_core.trainer import default_device


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 64-bit seed for batch ``index`` of a run seeded ``seed`` (no two (seed, index) pairs collide
    the way ``seed + index`` would)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def to_rgb_array(images: torch.Tensor) -> np.ndarray:
    """Samples in [−1, 1] (N, C, H, W) → uint8 (N, H, W, 3), a grey channel repeated: what external FID suites read."""
    pixels = to_uint8(images.cpu()).permute(0, 2, 3, 1)
    return (pixels.expand(-1, -1, -1, 3) if pixels.shape[-1] == 1 else pixels).contiguous().numpy()


@dataclass
class ImageSampler:
    """A trained network ready to draw images with its run config's sampling settings."""

    model: nn.Module
    schedule: NoiseSchedule
    cfg: RunConfig
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of one image as drawn."""
        size = self.cfg.data.resolution
        return size, size, 3

    @property
    def batch_size(self) -> int:
        return self.cfg.eval.batch_size

    @torch.no_grad()
    def batch(self, seed: int, index: int, count: int) -> np.ndarray:
        """Batch ``index`` of a run seeded ``seed``: ``count`` images, uint8 (count, H, W, 3); initial noises, class
        labels and per-step noises all come from the batch's own generator."""
        gen = torch.Generator().manual_seed(batch_seed(seed, index))
        c, size = self.cfg.data.channels, self.cfg.data.resolution
        x_T = torch.randn((count, c, size, size), generator=gen).to(self.device)
        y = torch.randint(0, self.cfg.data.num_classes, (count,), generator=gen).to(self.device) if self.cfg.model.class_conditional else None
        images = sample(self.model, self.schedule, x_T, self.cfg.diffusion.prediction, sampler_settings(self.cfg), y, gen)
        return to_rgb_array(images)

    def draw(self, num_samples: int, seed: int, batch_size: int | None = None) -> np.ndarray:
        """``num_samples`` images for ``seed``, uint8 (N, H, W, 3), in batches of ``batch_size`` (default
        ``eval.batch_size``); the same arguments give the same images."""
        size = batch_size or self.batch_size
        if num_samples < 1 or size < 1:
            raise ValueError(f"num_samples ({num_samples}) and batch_size ({size}) must be at least 1")
        batches = [self.batch(seed, i, min(size, num_samples - i * size)) for i in range(math.ceil(num_samples / size))]
        return np.concatenate(batches)


def load_sampler(path: str, device: torch.device | str | None = None) -> ImageSampler:
    """The model file (or trainer checkpoint) at ``path`` on ``device`` (default: CUDA when available)."""
    device = torch.device(device) if device is not None else default_device()
    model, cfg, _ = load_model(path, device)
    return ImageSampler(model, build_schedule(cfg.diffusion).to(device), cfg, device)
