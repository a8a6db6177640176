"""A sweep replayed over a table (``bench._efficiency_table``) instead of trained: a discrete-event simulation with a
simulated clock and the sweep's concurrency, in which a strategy decides exactly as it would in a real sweep.

Each of ``workers`` slots runs one trial at a time; a rung of a trial takes the training and evaluation seconds the
table recorded for it. When a rung finishes, the strategy sees its result (FID, its noise, the step) and says
whether the trial goes on; a free slot asks the strategy for the next configuration. The replay stops once the
trials have spent ``budget_steps`` training steps between them (or the strategy has no trial left to start).
Ties in time go to the trial started first, so a replay is a pure function of (table, strategy, seed).
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench._efficiency_table import Table, config_key


class Strategy(Protocol):
    """What the replay asks of a search strategy (a sampler plus, optionally, a pruner)."""

    def start(self, trial_id: str) -> dict[str, Any] | None:
        """The next trial's ``{path: value}`` configuration, or None when none can start now."""

    def result(self, trial_id: str, result: dict[str, Any]) -> bool:
        """A rung's result of a running trial (not its last one): True to go on to the next rung."""

    def finish(self, trial_id: str, result: dict[str, Any]) -> None:
        """The trial's last result: it reached ``train.max_steps`` or was stopped at this rung."""


@dataclass(frozen=True)
class Report:
    """One rung result as the sweep saw it: when, after how much compute in all, by which trial, and its FID."""

    seconds: float  # simulated wall time since the sweep started
    trial_steps: int  # training steps of every trial summed, up to and including this rung
    trial_id: str
    config: str  # config_key of the trial's configuration
    step: int
    fid: float


@dataclass
class Trace:
    """Every report of a replay, in time order, and each trial's last step (where it stopped)."""

    reports: list[Report] = field(default_factory=list)
    stopped_at: dict[str, int] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)  # trial id -> config_key

    def first_reaching(self, target: float) -> Report | None:
        """The first report with FID <= ``target`` (None: never)."""
        return next((r for r in self.reports if r.fid <= target), None)

    @property
    def best_fid(self) -> float:
        return min(r.fid for r in self.reports)


def rung_result(row: dict[str, Any], iteration: int) -> dict[str, Any]:
    """What the trainable reports at a rung (the keys a scheduler and a searcher read)."""
    return {"fid": row["fid"], "fid_std": row["fid_std"], "kid": row["kid"], "kid_std": row["kid_std"],
            "step": row["step"], "training_iteration": iteration}


def rung_seconds(rows: list[dict[str, Any]], k: int) -> float:
    return rows[k]["train_seconds"] + rows[k]["eval_seconds"]


def replay(table: Table, strategy: Strategy, workers: int, budget_steps: int, max_trials: int | None = None) -> Trace:
    """Run ``strategy`` over ``table`` with ``workers`` concurrent trials until ``budget_steps`` trial-steps (and at
    most ``max_trials`` trials, as ``sweep.num_trials``)."""
    trace = Trace()
    running: dict[str, list[dict[str, Any]]] = {}
    events: list[tuple[float, int, str, int]] = []  # (finish time, start order, trial id, rung index)
    numbers = itertools.count()
    spent = 0
    limit = math.inf if max_trials is None else max_trials

    def launch(now: float) -> None:
        while len(running) < workers and spent < budget_steps and len(trace.configs) < limit:
            trial_id = f"trial_{len(trace.configs):04d}"
            config = strategy.start(trial_id)
            if config is None:
                return
            trace.configs[trial_id] = config_key(config)
            running[trial_id] = table.rungs(config)
            heapq.heappush(events, (now + rung_seconds(running[trial_id], 0), next(numbers), trial_id, 0))

    launch(0.0)
    while events and spent < budget_steps:
        now, order, trial_id, k = heapq.heappop(events)
        rows = running[trial_id]
        spent += rows[k]["step"] - (rows[k - 1]["step"] if k else 0)
        trace.reports.append(Report(now, spent, trial_id, trace.configs[trial_id], rows[k]["step"], rows[k]["fid"]))
        result = rung_result(rows[k], k + 1)
        if rows[k]["step"] < table.max_steps and strategy.result(trial_id, result):
            if k + 1 == len(rows):
                raise KeyError(f"{table.problem}: {trace.configs[trial_id]} has no rung after step {rows[k]['step']}")
            heapq.heappush(events, (now + rung_seconds(rows, k + 1), order, trial_id, k + 1))
            continue
        strategy.finish(trial_id, result)
        trace.stopped_at[trial_id] = rows[k]["step"]
        del running[trial_id]
        launch(now)
    return trace
