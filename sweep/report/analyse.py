"""What a sweep's numbers say, on the report model: rank fidelity per rung, pruned trials that were ahead of the
winner, the best FID against the compute spent, and an Optuna study for parameter importance.

Rank fidelity: does the FID ranking at an early rung predict the final ranking? The sweep prunes on short runs
and assumes the ranking holds. For each rung, Spearman's rho between the trials' FIDs at that rung and their FIDs
at the final step, over the trials that reached the final step.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from scipy.stats import spearmanr

from sweep.report.model import Sweep, Trial
from sweep.space import Dimension, categorical_label, distribution

MIN_TRIALS = 3


@dataclass(frozen=True)
class RungFidelity:
    step: int
    n: int  # trials that reached the end and have a FID at this rung
    rho: float | None  # None: not defined (too few trials, or a constant ranking)
    reason: str = ""

    def label(self) -> str:
        return f"{self.rho:+.3f}" if self.rho is not None else f"n/a ({self.reason})"


def rank_fidelity(histories: Mapping[str, Mapping[int, float]], final_step: int | None = None) -> list[RungFidelity]:
    """One entry per rung before ``final_step`` (default: the largest step any trial reached).

    ``histories`` maps a trial to its ``{step: fid}``; non-finite FIDs are left out."""
    clean = {t: {int(s): float(v) for s, v in h.items() if math.isfinite(float(v))} for t, h in histories.items()}
    steps = sorted({s for h in clean.values() for s in h})
    if not steps:
        return []
    final = max(steps) if final_step is None else final_step
    finishers = {t: h for t, h in clean.items() if final in h}
    out = []
    for step in (s for s in steps if s < final):
        pairs = [(h[step], h[final]) for h in finishers.values() if step in h]
        if len(pairs) < MIN_TRIALS:
            out.append(RungFidelity(step, len(pairs), None, f"{len(pairs)} trials reached the end, need {MIN_TRIALS}"))
            continue
        rung, last = zip(*pairs)
        if len(set(rung)) == 1 or len(set(last)) == 1:
            out.append(RungFidelity(step, len(pairs), None, "all FIDs tie"))
            continue
        rho = float(spearmanr(rung, last).statistic)
        out.append(RungFidelity(step, len(pairs), rho if math.isfinite(rho) else None, "" if math.isfinite(rho) else "undefined"))
    return out


def sweep_fidelity(sweep: Sweep) -> list[RungFidelity]:
    return rank_fidelity({t.name: t.fid for t in sweep.trials}, sweep.max_steps)


def pruned_ahead_of_winner(sweep: Sweep) -> list[tuple[Trial, int, float, float]]:
    """Pruned trials whose FID at their last rung was better than the eventual winner's at that rung."""
    winner = sweep.winner
    if winner is None:
        return []
    out = []
    for t in sweep.trials:
        step = t.last_step
        if t.status == "pruned" and step in winner.fid and t.fid[step] < winner.fid[step]:
            out.append((t, step, t.fid[step], winner.fid[step]))
    return out


@dataclass(frozen=True)
class ComputePoint:
    steps_spent: int  # training steps of all trials together when this evaluation finished
    best_fid: float  # best FID so far
    trial: Trial
    step: int


def best_vs_compute(sweep: Sweep) -> list[ComputePoint]:
    """Best FID so far against cumulative training steps, evaluations in the order they finished."""
    events = sorted(((t.fid_time.get(s, 0), s, i) for i, t in enumerate(sweep.trials) for s in t.fid))
    spent, best, last_step, points = 0, math.inf, {}, []
    for _, step, i in events:
        trial = sweep.trials[i]
        spent += step - last_step.get(i, 0)
        last_step[i] = step
        best = min(best, trial.fid[step])
        points.append(ComputePoint(spent, best, trial, step))
    return points


def param_value(dim: Dimension, value: Any) -> Any:
    """A trial's parameter (typed, or as the tracker stored it: ``str(value)``) as Optuna's distribution holds it."""
    if dim.kind == "choice":
        for choice in dim.choices or []:
            if choice == value or str(choice) == str(value):
                return categorical_label(choice)
        raise ValueError(f"{value!r} is not one of {dim.choices}")
    return int(float(value)) if dim.kind == "int" else float(value)


def importance_study(sweep: Sweep, step: int) -> optuna.Study:
    """An Optuna study of the trials' FIDs at ``step``, with the sweep's own search distributions."""
    study = optuna.create_study(direction="minimize")
    for t in sweep.trials:
        if step not in t.fid:
            continue
        present = [d for d in sweep.dimensions if d.path in t.params]
        try:
            params = {d.path: param_value(d, t.params[d.path]) for d in present}
        except ValueError:
            continue  # a parameter the tracker holds that is not in the space (edited by hand): left out
        study.add_trial(optuna.trial.create_trial(
            params=params,
            distributions={d.path: distribution(d) for d in present},
            value=t.fid[step], user_attrs={"trial": t.name, "status": t.status}))
    return study
