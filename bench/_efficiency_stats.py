"""The figures of the efficiency benchmark, from replays (``bench._replay``) and tables (``bench._efficiency_table``):
time to the same target, anytime curves, rank fidelity of each rung, the rung FID's noise, and what pruning cut."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench._efficiency_table import Table
from bench._replay import Trace
from sweep.report.analyse import rank_fidelity as report_rank_fidelity


def time_to(trace: Trace, target: float) -> dict[str, float] | None:
    """Trial-steps and simulated seconds until the first report with FID <= ``target`` (None: not within budget)."""
    hit = trace.first_reaching(target)
    return None if hit is None else {"trial_steps": hit.trial_steps, "seconds": hit.seconds, "fid": hit.fid}


def ratio(hit: dict[str, float] | None, baseline: dict[str, float], key: str) -> float | None:
    return None if hit is None else hit[key] / baseline[key]


def anytime(trace: Trace, budgets: Sequence[int]) -> list[float | None]:
    """Best FID reported with at most each of ``budgets`` trial-steps spent (None before the first report)."""
    out, best, i = [], math.inf, 0
    for budget in budgets:
        while i < len(trace.reports) and trace.reports[i].trial_steps <= budget:
            best = min(best, trace.reports[i].fid)
            i += 1
        out.append(best if math.isfinite(best) else None)
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation, min and max of the values that exist, and how many do not."""
    there = [v for v in values if v is not None]
    if not there:
        return {"mean": None, "std": None, "min": None, "max": None, "missing": len(values)}
    std = statistics.stdev(there) if len(there) > 1 else 0.0
    return {"mean": statistics.fmean(there), "std": std, "min": min(there), "max": max(there),
            "missing": len(values) - len(there)}


def curve_band(curves: Sequence[Sequence[float | None]]) -> dict[str, list[float | None]]:
    """Per budget, the mean and the min-max band of the seeds' best-so-far FIDs (None where a seed has none yet)."""
    columns = list(zip(*curves, strict=True))
    bands = [spread(c) if all(v is not None for v in c) else spread([]) for c in columns]
    return {key: [b[key] for b in bands] for key in ("mean", "min", "max")}


def rank_fidelity(table: Table, configs: Sequence[str] | None = None) -> dict[int, float | None]:
    """Spearman's rho between each rung's FID and the final FID over ``configs`` (default: the whole table), by the
    sweep report's own ``rank_fidelity``."""
    keys = sorted(set(configs) if configs is not None else table.records)
    histories = {k: {r["step"]: r["fid"] for r in table.records[k]} for k in keys}
    return {r.step: r.rho for r in report_rank_fidelity(histories, table.max_steps)}


def rung_noise(table: Table) -> dict[int, dict[str, float]]:
    """Per rung: the median relative FID noise (fid_std / fid) over the table, and the median absolute gap between
    adjacent configurations when sorted by FID, in units of their noise (below ~1: neighbours are tied)."""
    steps = [r["step"] for r in next(iter(table.records.values()))]
    out = {}
    for k, step in enumerate(steps):
        rungs = sorted((rows[k] for rows in table.records.values()), key=lambda r: r["fid"])
        gaps = [(b["fid"] - a["fid"]) / max(math.hypot(a["fid_std"], b["fid_std"]), 1e-12) for a, b in zip(rungs, rungs[1:])]
        out[step] = {"relative_std": statistics.median(r["fid_std"] / r["fid"] for r in rungs),
                     "median_fid_std": statistics.median(r["fid_std"] for r in rungs),
                     "neighbour_gap_in_sigmas": statistics.median(gaps) if gaps else math.nan}
    return out


def oracle_steps(table: Table, target: float) -> int:
    """The fewest trial-steps any strategy can need to report FID <= ``target``: train only the configuration that
    gets there first, only until it does (the target is some configuration's FID, so one always does)."""
    return min(next(r["step"] for r in rows if r["fid"] <= target) for rows in table.records.values()
               if any(r["fid"] <= target for r in rows))


def eval_share(table: Table) -> float:
    """The evaluations' share of the seconds the table's rungs took (what trial-steps do not count)."""
    rows = [r for rows in table.records.values() for r in rows]
    return sum(r["eval_seconds"] for r in rows) / sum(r["train_seconds"] + r["eval_seconds"] for r in rows)


def winners_cut(table: Table, stops: Sequence[tuple[str, int]], configs: dict[str, str], target: float) -> dict[str, int]:
    """Of the trials a pruner stopped, how many would have reported FID <= ``target`` at a later rung."""
    cut = sum(1 for trial_id, step in stops
              if any(r["fid"] <= target for r in table.records[configs[trial_id]] if r["step"] > step))
    return {"stopped": len(stops), "would_have_reached_target": cut}
