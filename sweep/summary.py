"""What a finished (or interrupted) sweep amounts to: per-trial outcome, best trial, counts."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune import ResultGrid

PARAM_PREFIX = "config/"


@dataclass
class TrialOutcome:
    trial_id: str
    status: str  # completed / pruned / failed
    step: int
    best_fid: float
    last_fid: float
    params: dict[str, Any]
    run_id: str | None
    error: str | None = None
    ema_rate: float | None = None  # the bank's best EMA rate at the last evaluation
    sampling_best: dict[str, Any] | None = None  # the final-rung sampling study's best settings
    sampling_best_fid: float | None = None
    sampling_default_fid: float | None = None


@dataclass
class SweepSummary:
    trials: list[TrialOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def best(self) -> TrialOutcome | None:
        scored = [t for t in self.trials if math.isfinite(t.best_fid)]
        return min(scored, key=lambda t: t.best_fid) if scored else None


def outcome_label(step: int, max_steps: int, error: bool) -> str:
    if error:
        return "failed"
    return "completed" if step >= max_steps else "pruned"


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def summarize(results: ResultGrid, max_steps: int) -> SweepSummary:
    summary = SweepSummary()
    for result in results:
        metrics = result.metrics or {}
        step = int(metrics.get("step", 0))
        summary.trials.append(TrialOutcome(
            trial_id=str(metrics.get("trial_id") or result.path.rsplit("/", 1)[-1]),
            status=outcome_label(step, max_steps, result.error is not None),
            step=step,
            best_fid=float(metrics.get("best_fid", math.inf)),
            last_fid=float(metrics.get("fid", math.inf)),
            params=dict(result.config or {}),
            run_id=metrics.get("mlflow_run_id"),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            ema_rate=_optional_float(metrics.get("ema_rate")),
            sampling_best=json.loads(metrics["sampling_best"]) if metrics.get("sampling_best") else None,
            sampling_best_fid=_optional_float(metrics.get("sampling_best_fid")),
            sampling_default_fid=_optional_float(metrics.get("sampling_default_fid")),
        ))
    return summary
