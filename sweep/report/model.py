"""One model of a sweep and its trials, shared by the printed summary and the HTML report: whether it was
collected from Ray's results (the driver, at the end of a sweep) or from the tracker (``sweep.report``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("completed", "pruned", "failed", "running")


def outcome(step: int, max_steps: int, error: bool) -> str:
    """A finished trial's outcome: failed, completed (reached ``max_steps``) or pruned (stopped before it)."""
    if error:
        return "failed"
    return "completed" if step >= max_steps else "pruned"


@dataclass
class Trial:
    """One trial: its parameters, its FID at every rung, and what it found without retraining."""

    trial_id: str
    name: str
    status: str  # one of OUTCOMES
    params: dict[str, Any]
    fid: dict[int, float] = field(default_factory=dict)  # step -> FID of the bank's best EMA at that rung
    fid_time: dict[int, int] = field(default_factory=dict)  # step -> ms timestamp of the evaluation
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each reported metric
    run_id: str | None = None
    sampling_best: dict[str, Any] | None = None  # the final-rung sampling study's best settings
    error: str | None = None

    @property
    def last_step(self) -> int:
        return max(self.fid, default=0)

    @property
    def best_fid(self) -> float:
        """The minimum FID over the trial's rungs (DDPM's "minimum FID over the course of training")."""
        return min(self.fid.values(), default=math.inf)

    @property
    def best_step(self) -> int | None:
        return min(self.fid, key=self.fid.__getitem__) if self.fid else None

    @property
    def ema_rate(self) -> float | None:
        """The EMA rate of the trial's best rung."""
        rate = self.metrics.get("best_ema_rate")
        return None if rate is None else float(rate)


@dataclass
class Sweep:
    name: str
    max_steps: int
    trials: list[Trial]
    dimensions: list[Any]  # sweep.config.Dimension, in the order they are sampled
    parent_run_id: str = ""
    parent_status: str = ""

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def best(self) -> Trial | None:
        """The trial with the lowest FID at any rung: the one place that picks a sweep's best trial."""
        scored = [t for t in self.trials if math.isfinite(t.best_fid)]
        return min(scored, key=lambda t: t.best_fid) if scored else None

    @property
    def winner(self) -> Trial | None:
        """The best of the trials that ran to the end, by final FID."""
        done = [t for t in self.trials if self.max_steps in t.fid]
        return min(done, key=lambda t: t.fid[self.max_steps]) if done else None

    def ranked(self) -> list[Trial]:
        return sorted(self.trials, key=lambda t: (t.best_fid, t.name))
