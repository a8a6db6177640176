"""Collect a sweep into the report model, from the tracker (any time, any machine) or from Ray's results
(the driver, when the sweep ends)."""
from __future__ import annotations

import json
from typing import Any

import yaml
from ray.tune import ResultGrid

from sweep.config import SweepConfig, parse_sweep
from sweep.report.model import Sweep, Trial, outcome
from sweep.tracking import STATUS_TAG, TRIAL_TAG, RunRecord, Tracker

RESOLVED_SPACE = "resolved_space.yaml"  # the parent run's sweep file as the driver resolved it


def resolved_sweep(tracker: Tracker, parent_run_id: str) -> SweepConfig:
    """The sweep of a parent run, from its ``resolved_space.yaml`` artifact."""
    return parse_sweep(yaml.safe_load(tracker.read_text(parent_run_id, RESOLVED_SPACE)), RESOLVED_SPACE)


def _sampling_best(text: Any) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _tracked_trial(tracker: Tracker, run: RunRecord) -> Trial:
    history = tracker.history(run.run_id, "fid")
    return Trial(
        trial_id=run.tags.get(TRIAL_TAG, ""), name=run.name, status=run.tags.get(STATUS_TAG, "running"), params=run.params,
        fid={p.step: p.value for p in history}, fid_time={p.step: p.timestamp for p in history}, metrics=run.metrics,
        run_id=run.run_id, sampling_best=_sampling_best(run.tags.get("sampling_best")), error=run.tags.get("failure_reason"),
    )


def from_tracker(tracker: Tracker, experiment: str, name: str, cfg: SweepConfig | None = None,
                 parent_run_id: str | None = None) -> tuple[Sweep, SweepConfig]:
    """The sweep's parent run (``parent_run_id``, else the sweep's latest), its resolved space and every trial run."""
    parent = tracker.get_run(parent_run_id) if parent_run_id else tracker.find_sweep(experiment, name)
    cfg = cfg or resolved_sweep(tracker, parent.run_id)
    trials = [_tracked_trial(tracker, run) for run in tracker.children(parent)]
    sweep = Sweep(name, cfg.run_config({}).train.max_steps, trials, cfg.dimensions, parent.run_id, parent.status)
    return sweep, cfg


def _rungs(result: Any) -> tuple[dict[int, float], dict[int, int]]:
    """A Ray result's FID per reported step, and when it was reported (ms)."""
    rows = result.metrics_dataframe
    if rows is None or "fid" not in rows:
        return {}, {}
    rows = rows.dropna(subset=["fid"])
    fid = {int(step): float(value) for step, value in zip(rows["step"], rows["fid"])}
    return fid, {int(step): int(1000 * time) for step, time in zip(rows["step"], rows["timestamp"])}


def from_results(results: ResultGrid, cfg: SweepConfig) -> Sweep:
    """The sweep as Ray recorded it: every reported rung of every trial, and how each ended."""
    max_steps = cfg.run_config({}).train.max_steps
    trials = []
    for result in results:
        metrics = dict(result.metrics or {})
        fid, times = _rungs(result)
        trial_id = str(metrics.get("trial_id") or result.path.rsplit("/", 1)[-1])
        trials.append(Trial(
            trial_id=trial_id, name=trial_id, status=outcome(int(metrics.get("step", 0)), max_steps, result.error is not None),
            params=dict(result.config or {}), fid=fid, fid_time=times,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            run_id=metrics.get("run_id"), sampling_best=_sampling_best(metrics.get("sampling_best")),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
        ))
    return Sweep(cfg.name, max_steps, trials, cfg.dimensions)
