"""Evaluation at a rung: N samples from the EMA model, from the same seeded initial noise every time
(common random numbers), scored by FID and KID against cached reference statistics."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from rich.progress import Progress
from torch import Tensor, nn
from torchvision.utils import make_grid

from diffusion_core.config import RunConfig
from diffusion_core.data import load_images, to_uint8, to_unit_range
from diffusion_core.fid_bootstrap import fid_std
from diffusion_core.metrics import InceptionFeatures, ReferenceCache, ReferenceStats, fid_kid
from diffusion_core.samplers import SamplerSettings, sample
from diffusion_core.schedules import NoiseSchedule

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    fid: float
    kid: float
    kid_std: float
    seconds: float
    grid: Tensor  # uint8 (3, H, W) image grid of the first samples
    sampling_seconds: float = 0.0  # of ``seconds``, the time spent generating the samples
    fid_std: float = math.nan  # bootstrap std of ``fid`` over the N samples: its sampling noise

    def metrics(self) -> dict[str, float]:
        return {"fid": self.fid, "kid": self.kid, "kid_std": self.kid_std, "fid_std": self.fid_std, "eval_seconds": self.seconds}


@dataclass
class BankEvaluation:
    """Every EMA of a bank evaluated at one rung on the same initial noises; the best one stands for the run."""

    results: dict[float, EvalResult]

    @property
    def best_rate(self) -> float:
        return min(self.results, key=lambda rate: self.results[rate].fid)

    @property
    def best(self) -> EvalResult:
        return self.results[self.best_rate]

    def metrics(self) -> dict[str, float]:
        """The best EMA's fid/kid (what ASHA ranks on), its rate, the total evaluation time, and one
        ``fid_ema_<rate>`` per rate when the bank holds more than one."""
        out = {**self.best.metrics(), "ema_rate": self.best_rate,
               "eval_seconds": sum(r.seconds for r in self.results.values())}
        if len(self.results) > 1:
            out.update({f"fid_ema_{rate:g}": r.fid for rate, r in self.results.items()})
        return out


def sampler_settings(cfg: RunConfig) -> SamplerSettings:
    """The run's sampling settings (``eval``'s sampling keys), with at most T sampling steps."""
    settings = cfg.eval.settings()
    return settings.model_copy(update={"sampling_steps": min(settings.sampling_steps, cfg.diffusion.timesteps)})


def fixed_noise(cfg: RunConfig) -> tuple[Tensor, Tensor | None]:
    """The evaluation's initial noises x_T (and class labels): a pure function of ``eval.seed``."""
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    shape = (cfg.eval.num_samples, cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    x_T = torch.randn(shape, generator=gen)
    labels = torch.randint(0, cfg.data.num_classes, (cfg.eval.num_samples,), generator=gen) if cfg.model.class_conditional else None
    return x_T, labels


def reference_key(cfg: RunConfig, num_images: int) -> dict[str, object]:
    d = cfg.data
    return {"dataset": d.dataset, "split": cfg.eval.reference_split, "image_size": d.resolution, "num_images": num_images}


class Evaluator:
    """Holds the Inception network and the reference statistics for one data configuration.

    ``progress``: a rich Progress that shows sampling and Inception passes as bars (interactive use only)."""

    def __init__(self, cfg: RunConfig, device: torch.device | str = "cpu", features: InceptionFeatures | None = None,
                 progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.features = features or InceptionFeatures(cfg.eval.inception_weights, device=self.device)
        self.progress = self.features.progress = progress
        self.x_T, self.labels = fixed_noise(cfg)
        self._reference: ReferenceStats | None = None

    @property
    def reference(self) -> ReferenceStats:
        if self._reference is None:
            self._reference = self._load_reference()
        return self._reference

    def _load_reference(self) -> ReferenceStats:
        """Cached statistics of ``eval.reference_images`` real images; the dataset is only read on a miss."""
        e = self.cfg.eval

        def images() -> Tensor:
            data = load_images(self.cfg.data.model_copy(update={"subset": None}), train=e.reference_split == "train")
            chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: e.reference_images]
            return to_unit_range(data.images[chosen])

        return ReferenceCache(e.cache_dir).get(reference_key(self.cfg, e.reference_images), images, self.features)

    @torch.no_grad()
    def generate(self, model: nn.Module, schedule: NoiseSchedule) -> Tensor:
        """All N samples in [−1, 1], in batches, on the evaluator's device."""
        settings = sampler_settings(self.cfg)
        gen = torch.Generator().manual_seed(self.cfg.eval.seed + 1)
        model.eval()
        batches = []
        task = self.progress.add_task("sampling", total=len(self.x_T), status="") if self.progress else None
        for start in range(0, len(self.x_T), self.cfg.eval.batch_size):
            x_T = self.x_T[start : start + self.cfg.eval.batch_size].to(self.device)
            y = None if self.labels is None else self.labels[start : start + len(x_T)].to(self.device)
            batches.append(sample(model, schedule, x_T, self.cfg.diffusion.prediction, settings, y, gen).cpu())
            if task is not None:
                self.progress.advance(task, len(x_T))
        if task is not None:
            self.progress.remove_task(task)
        return torch.cat(batches)

    def __call__(self, model: nn.Module, schedule: NoiseSchedule) -> EvalResult:
        start = time.perf_counter()
        reference = self.reference
        images = to_unit_range(to_uint8(self.generate(model, schedule)))  # quantised like the reference
        sampling_seconds = time.perf_counter() - start
        features = self.features(images)
        scores = fid_kid(features, reference, self.cfg.eval.kid_subset_size)
        noise = fid_std(features, reference, seed=self.cfg.eval.seed)
        grid = make_grid(to_uint8(images[: self.cfg.eval.grid_size]), nrow=max(1, int(len(images[: self.cfg.eval.grid_size]) ** 0.5)))
        seconds = time.perf_counter() - start
        log.info("evaluated %d samples in %.1fs: FID %.2f, KID %.4f", len(images), seconds, scores["fid"], scores["kid"])
        return EvalResult(scores["fid"], scores["kid"], scores["kid_std"], seconds, grid, sampling_seconds, noise)


def evaluate_bank(evaluator: Evaluator, models: dict[float, nn.Module], schedule: NoiseSchedule) -> BankEvaluation:
    """FID/KID of each EMA model (keyed by decay rate): several EMA rates judged from one training."""
    return BankEvaluation({rate: evaluator(model, schedule) for rate, model in models.items()})
