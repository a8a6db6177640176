"""A sweep replayed over a table (``bench._efficiency_table``) instead of trained: a discrete-event simulation with a
simulated clock and the sweep's concurrency, in which a strategy decides exactly as it would in a real sweep.

Each of ``workers`` slots runs one trial at a time; a rung of a trial takes the training and evaluation seconds the
table recorded for it. When a rung finishes, the strategy sees its result (FID, its noise, the step) and decides as
a Tune scheduler does: go on, stop, or pause (the slot is freed; the trial may be resumed later at its next rung);
a trial at ``train.max_steps`` ends whatever it decides. A free slot asks the strategy for a new configuration or a
paused trial to resume. The replay stops once the trials have spent ``budget_steps`` training steps between them
(or the strategy has nothing to start). Ties in time go to the trial started first, so a replay is a pure function
of (table, strategy, seed).
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.tune.schedulers import TrialScheduler

from bench._efficiency_table import Table, config_key


@dataclass(frozen=True)
class Resume:
    """What ``Strategy.start`` returns to resume a paused trial instead of starting a new one."""

    trial_id: str


class Strategy(Protocol):
    """What the replay asks of a search strategy (a sampler plus, optionally, a pruner)."""

    def start(self, trial_id: str | None) -> dict[str, Any] | Resume | None:
        """A new trial ``trial_id``'s ``{path: value}`` configuration, a paused trial to resume, or None (nothing
        can start now); ``trial_id`` None: no new trial may start."""

    def result(self, trial_id: str, result: dict[str, Any]) -> str:
        """A rung's result of a running trial: ``TrialScheduler.CONTINUE``, ``STOP`` or ``PAUSE``."""

    def finish(self, trial_id: str, result: dict[str, Any]) -> None:
        """The trial's last result: it reached ``train.max_steps`` or was stopped at this rung."""

    def released(self) -> list[str]:
        """Paused trials the strategy has ended since it was last asked (they will not resume)."""


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


@dataclass
class _Run:
    """The replay's state: trials running (their rows and rung), paused (their rung), and the compute spent."""

    table: Table
    trace: Trace = field(default_factory=Trace)
    running: dict[str, int] = field(default_factory=dict)  # trial id -> index of the rung in progress
    paused: dict[str, int] = field(default_factory=dict)  # trial id -> index of its last finished rung
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[tuple[float, int, str, int]] = field(default_factory=list)  # (finish time, order, trial id, rung)
    order: dict[str, int] = field(default_factory=dict)
    spent: int = 0

    def run_rung(self, now: float, trial_id: str, k: int) -> None:
        self.running[trial_id] = k
        self.order.setdefault(trial_id, len(self.order))
        heapq.heappush(self.events, (now + rung_seconds(self.rows[trial_id], k), self.order[trial_id], trial_id, k))

    def end(self, trial_id: str, k: int) -> None:
        self.trace.stopped_at[trial_id] = self.rows[trial_id][k]["step"]


def replay(table: Table, strategy: Strategy, workers: int, budget_steps: int, max_trials: int | None = None) -> Trace:
    """Run ``strategy`` over ``table`` with ``workers`` concurrent trials until ``budget_steps`` trial-steps (and at
    most ``max_trials`` trials, as ``sweep.num_trials``)."""
    run = _Run(table)
    ids = itertools.count()
    limit = math.inf if max_trials is None else max_trials

    def launch(now: float) -> None:
        while len(run.running) < workers and run.spent < budget_steps:
            # as Tune after num_samples trials: nothing new starts, a paused trial may still resume
            trial_id = f"trial_{next(ids):04d}" if len(run.trace.configs) < limit else None
            started = strategy.start(trial_id) if trial_id or run.paused else None
            if started is None:
                return
            if isinstance(started, Resume):
                run.run_rung(now, started.trial_id, run.paused.pop(started.trial_id) + 1)
                continue
            run.trace.configs[trial_id] = config_key(started)
            run.rows[trial_id] = table.rungs(started)
            run.run_rung(now, trial_id, 0)

    launch(0.0)
    while run.events and run.spent < budget_steps:
        now, _, trial_id, k = heapq.heappop(run.events)
        rows = run.rows[trial_id]
        run.spent += rows[k]["step"] - (rows[k - 1]["step"] if k else 0)
        run.trace.reports.append(Report(now, run.spent, trial_id, run.trace.configs[trial_id], rows[k]["step"], rows[k]["fid"]))
        result = rung_result(rows[k], k + 1)
        decision = strategy.result(trial_id, result)
        del run.running[trial_id]
        if rows[k]["step"] >= table.max_steps or decision == TrialScheduler.STOP:
            strategy.finish(trial_id, result)
            run.end(trial_id, k)
        elif k + 1 == len(rows):
            raise KeyError(f"{table.problem}: {run.trace.configs[trial_id]} has no rung after step {rows[k]['step']}")
        elif decision == TrialScheduler.PAUSE:
            run.paused[trial_id] = k
        else:
            run.run_rung(now, trial_id, k + 1)
        for ended in strategy.released():
            run.end(ended, run.paused.pop(ended))
        launch(now)
    return run.trace
