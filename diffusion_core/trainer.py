"""Trainer: AdamW with LR warm-up, gradient clipping, EMA, mixed precision on CUDA, optional channels-last
memory format and ``torch.compile``, seeded data order, exact checkpoint/restore, and data-parallel training over
an initialised ``torch.distributed`` process group (one ``Shard`` per process). Knows nothing of Ray or MLflow."""
from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffusion_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffusion_core.config import MAY_CHANGE, ConfigError, RunConfig, TrainConfig, changed_keys
from diffusion_core.data import BatchOrder, ImageData, load_images, to_unit_range
from diffusion_core.ema import EMABank
from diffusion_core.objectives import diffusion_loss, sample_timesteps
from diffusion_core.schedules import build_schedule
from diffusion_core.unet import build_unet

GPU_DATA_LIMIT_BYTES = 4 * 2**30


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_optimizer(params: Iterable[Tensor], train: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter) on PyTorch's fused kernel (one kernel for all parameters, on CUDA as on the CPU)."""
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, fused=True)


@dataclass(frozen=True)
class Shard:
    """This process's part of data-parallel training: rank ``rank`` of ``world_size`` processes (whose
    ``torch.distributed`` process group is initialised) takes every ``world_size``-th item of the global batch."""

    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    def take(self, batch: Tensor) -> Tensor:
        """This rank's items of a global batch."""
        return batch[self.rank :: self.world_size]


def data_parallel(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` wrapped so that its backward averages the gradients over the process group (its parameters are
    broadcast from rank 0 first)."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class Trainer:
    """One training run. ``step`` counts optimizer steps done; ``train_until`` continues from it.

    The run's randomness is its own: the global RNG streams its model init and dropout draw from are kept in
    ``rng`` and swapped in only while the trainer works, so whatever runs between two ``train_until`` calls (an
    evaluation, building the FID network) cannot change the training, and a restored run repeats it exactly.

    With a ``shard``, each process draws the global batch's indices, timesteps and noises exactly as one process
    would, keeps its shard of them, and DistributedDataParallel averages the gradients: K processes train the
    same run as one (up to float summation order), on ``train.batch_size`` images per step in all. Dropout masks
    are each rank's own, reseeded from (seed, step, rank), so every rank's RNG state stays equal to rank 0's and
    rank 0's checkpoint restores them all.
    """

    def __init__(self, cfg: RunConfig, device: torch.device | str | None = None, data: ImageData | None = None,
                 shard: Shard | None = None) -> None:
        if shard is not None and cfg.train.batch_size % shard.world_size:
            raise ValueError(f"train.batch_size {cfg.train.batch_size} does not split into {shard.world_size} equal shards")
        self.cfg, self.shard = cfg, shard
        self.device = torch.device(device) if device is not None else default_device()
        train = cfg.train
        data = data if data is not None else load_images(cfg.data, train=True)
        fits = data.images.numel() <= GPU_DATA_LIMIT_BYTES
        self.data = data.to(self.device) if fits else data
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        with self._own_rng(seed=train.seed):
            self.model = build_unet(cfg).to(self.device, memory_format=self.memory_format)
        self.emas = EMABank(self.model, train.ema_rates, train.ema_warmup_steps)
        net = self.model if shard is None else data_parallel(self.model, self.device)
        self.loss_model = torch.compile(net) if train.compile else net  # shares the parameters
        self.optimizer = build_optimizer(self.model.parameters(), train)
        self.schedule = build_schedule(cfg.diffusion).to(self.device)
        self.order = BatchOrder(len(self.data), train.batch_size, train.seed)
        self.generator = torch.Generator(self.device).manual_seed(train.seed + 1)
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" and train.mixed_precision else None
        self.step = 0

    @contextmanager
    def _own_rng(self, seed: int | None = None) -> Iterator[None]:
        """Run the block on this run's global RNG streams (seeded from ``seed`` the first time), leaving the
        caller's streams as they were."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self.rng["cpu"])
                if devices and "cuda" in self.rng:
                    torch.cuda.set_rng_state(self.rng["cuda"], self.device)
            yield
            self.rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(self.device)} if devices else {})}

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``train.lr`` over ``train.warmup_steps``, then constant."""
        warmup = self.cfg.train.warmup_steps
        return self.cfg.train.lr * min(1.0, (step + 1) / warmup) if warmup else self.cfg.train.lr

    def _mine(self, batch: Tensor) -> Tensor:
        """This process's items of a global batch (all of them without a shard)."""
        return batch if self.shard is None else self.shard.take(batch)

    def _batch(self) -> tuple[Tensor, Tensor | None]:
        idx = self.order.indices(self.step).to(self.data.images.device)
        mine = self._mine(idx)
        x_0 = to_unit_range(self.data.images[mine].to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        if not self.cfg.model.class_conditional:
            return x_0, None
        y = self.data.labels[mine].to(self.device)
        drop = self._mine(torch.rand(len(idx), generator=self.generator, device=self.device) < self.cfg.train.label_dropout)
        return x_0, torch.where(drop, torch.full_like(y, self.model.null_class), y)

    def train_step(self) -> Tensor:
        """One optimizer step on the next batch; returns the loss as a 0-d tensor (no host sync)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        x_0, y = self._batch()
        n = self.cfg.train.batch_size
        t = self._mine(sample_timesteps(n, self.schedule.timesteps, self.generator, self.device, self.cfg.diffusion.min_timestep))
        eps = self._mine(torch.randn((n, *x_0.shape[1:]), generator=self.generator, device=self.device))
        if self.shard is not None:
            torch.manual_seed((self.cfg.train.seed * 1_000_003 + self.step) * 4099 + self.shard.rank)  # this rank's dropout
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            d = self.cfg.diffusion
            loss = diffusion_loss(self.loss_model, self.schedule, x_0, t, eps, d.prediction, y, d.vlb_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.emas.update(self.model, self.step)
        return loss.detach()

    def train_until(self, target_step: int, check_every: int | None = None) -> list[float]:
        """Train up to ``target_step``; returns the per-step losses. Raises DivergenceError on a
        non-finite loss (checked every step on CPU, every ``check_every`` steps on GPU)."""
        check_every = check_every or (1 if self.device.type == "cpu" else 25)
        losses: list[Tensor] = []
        with self._own_rng():
            while self.step < target_step:
                losses.append(self.train_step())
                if len(losses) % check_every == 0 or self.step == target_step:
                    recent = torch.stack(losses[-check_every:])
                    if not bool(torch.isfinite(recent).all()):
                        raise DivergenceError(f"loss became {float(recent[~torch.isfinite(recent)][0])} at step {self.step}")
        return self._global_losses(torch.stack(losses)) if losses else []

    def _global_losses(self, losses: Tensor) -> list[float]:
        """Per-step losses of the global batch: with a shard, the mean over the ranks' equal shards."""
        if self.shard is not None:
            dist.all_reduce(losses)
            losses = losses / self.shard.world_size
        return [float(x) for x in losses.tolist()]

    def state_dict(self) -> dict[str, Any]:
        rng = {**self.rng, "generator": self.generator.get_state()}
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "emas": self.emas.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "config": self.cfg.model_dump_json(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.emas.load_state_dict(state["emas"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        self.rng = {k: v for k, v in state["rng"].items() if k != "generator"}

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """A trainer checkpoint of this run; ``extra`` holds the caller's state (the rung loop's)."""
        return save_checkpoint({**self.state_dict(), "extra": extra or {}}, path, "trainer")

    def load_checkpoint(self, path: str | Path, may_change: Collection[str] = MAY_CHANGE) -> dict[str, Any]:
        """Restore everything from ``path``; returns the checkpoint's ``extra`` mapping. A checkpoint of a run whose
        config differs from this one's in any key outside ``may_change`` is a ConfigError listing the differences
        (continuing it would report another model's FID as this run's)."""
        state = load_checkpoint(path, ("trainer",))
        changes = changed_keys(json.loads(state["config"]), json.loads(self.cfg.model_dump_json()))
        refused = {k: v for k, v in changes.items() if k not in may_change}
        if refused:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:6])
            raise ConfigError(f"{path}: continues a run trained with another config ({listed}); undo the change, or "
                              f"use another name or output_dir (may change: {', '.join(sorted(may_change))})")
        try:
            self.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: does not match this run's configuration ({exc})") from None
        return state.get("extra", {})
