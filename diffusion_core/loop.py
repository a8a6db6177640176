"""The rung loop, the one training loop of the project: train to each evaluation step (a rung), evaluate every
EMA of the bank on the fixed initial noises, keep the minimum-FID model (DDPM reports "the minimum FID over the
course of training") and the last trainer checkpoint, and hand each rung to a callback.

``python -m diffusion_core.train`` and the Ray Tune trainable are adapters over it: one writes files and a
progress bar, the other reports to Tune and the tracker. Both write the same files into the loop's folder:
``checkpoint_last.pt`` (a trainer checkpoint, to continue), ``checkpoint_best.pt`` (a model file) and a sample grid
per rung (``samples_<step>.png``). In data-parallel training (``sweep.finalize``) rank 0's loop evaluates and writes
them; the other ranks' loops have no evaluator and only train, rung by rung in step with it.
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.io import write_png

from diffusion_core.checkpoint import save_model
from diffusion_core.config import MAY_CHANGE
from diffusion_core.evaluate import BankEvaluation, Evaluator, evaluate_bank
from diffusion_core.trainer import Trainer

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def samples_file(step: int) -> str:
    """The name of a rung's sample grid (the first samples of the bank's best EMA, from the fixed noises)."""
    return f"samples_{step:07d}.png"


@dataclass
class Best:
    """The run's best rung so far: the one place that decides "best" (lowest FID of the bank's best EMA)."""

    step: int = 0
    fid: float = math.inf
    kid: float = math.nan
    ema_rate: float | None = None

    def improved_by(self, evaluation: BankEvaluation) -> bool:
        return evaluation.best.fid < self.fid


@dataclass
class Rung:
    """One rung: the training since the previous one, the bank's evaluation, and the best so far."""

    step: int
    losses: list[float]
    train_seconds: float
    evaluation: BankEvaluation | None  # None in a loop without an evaluator (a data-parallel rank other than 0)
    best: Best
    improved: bool  # this rung's best EMA is the new best model (written to BEST)
    final: bool  # the run reached train.max_steps
    model: nn.Module | None = field(repr=False)  # this rung's best EMA network (None without an evaluation)

    def metrics(self) -> dict[str, float]:
        """What a rung reports: mean loss, training time, the bank's evaluation and the best rung so far."""
        trained = {"loss": sum(self.losses) / len(self.losses), "train_seconds": self.train_seconds}
        if self.evaluation is None:
            return trained
        return {**trained, **self.evaluation.metrics(), "best_fid": self.best.fid, "best_ema_rate": self.best.ema_rate}


def next_rung(step: int, every_steps: int, max_steps: int) -> int:
    """The first multiple of ``every_steps`` after ``step``, at most ``max_steps``."""
    return min(max_steps, (step // every_steps + 1) * every_steps)


class RungLoop:
    """Trains ``trainer`` rung by rung, writing ``LAST`` and ``BEST`` into ``folder``; ``extra`` is the caller's
    state (e.g. its tracking run id), saved in every ``LAST`` and given back by ``restore``. Without an
    ``evaluator`` the loop only trains: no evaluation, no files (a data-parallel rank other than 0)."""

    def __init__(self, trainer: Trainer, evaluator: Evaluator | None, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
        self.trainer, self.evaluator = trainer, evaluator
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.extra = dict(extra or {})
        self.best = Best()

    def restore(self, source: str | Path | None = None, may_change: Collection[str] = MAY_CHANGE) -> bool:
        """Continue from ``source``'s ``LAST`` (default: this loop's folder) if its run config differs from this one's
        only in ``may_change``; copies its ``BEST`` here. False when there is nothing to continue from."""
        source = Path(source) if source is not None else self.folder
        if not (source / LAST).is_file():
            return False
        extra = self.trainer.load_checkpoint(source / LAST, may_change)
        self.best = Best(**extra.pop("best", {}))
        self.extra = {**extra, **self.extra}
        if source.resolve() != self.folder.resolve() and (source / BEST).is_file():
            shutil.copyfile(source / BEST, self.folder / BEST)
        return True

    def run(self, on_rung: Callable[[Rung], None]) -> Best:
        """Train to ``train.max_steps``, one rung per ``eval.every_steps``; ``on_rung`` sees each rung after its
        checkpoints are written."""
        cfg = self.trainer.cfg
        while self.trainer.step < cfg.train.max_steps:
            started = time.perf_counter()
            losses = self.trainer.train_until(next_rung(self.trainer.step, cfg.eval.every_steps, cfg.train.max_steps))
            on_rung(self._rung(losses, time.perf_counter() - started))
        return self.best

    def _rung(self, losses: list[float], train_seconds: float) -> Rung:
        step = self.trainer.step
        final = step >= self.trainer.cfg.train.max_steps
        if self.evaluator is None:
            return Rung(step, losses, train_seconds, None, self.best, False, final, None)
        models = self.trainer.emas.models()
        evaluation = evaluate_bank(self.evaluator, models, self.trainer.schedule)
        result = evaluation.best
        improved = self.best.improved_by(evaluation)
        if improved:
            self.best = Best(step, result.fid, result.kid, evaluation.best_rate)
            save_model(self.folder / BEST, models[evaluation.best_rate].state_dict(), self.trainer.cfg,
                       {**asdict(self.best), "kid_std": result.kid_std})
        write_png(result.grid, str(self.folder / samples_file(step)))
        self.trainer.save_checkpoint(self.folder / LAST, extra={**self.extra, "best": asdict(self.best)})
        return Rung(step, losses, train_seconds, evaluation, self.best, improved, final, models[evaluation.best_rate])
