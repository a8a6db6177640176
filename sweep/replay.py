"""Deliver to the tracker what trials reported to Ray but the tracker never got (it was away when they ended): the
rung metrics from each trial's Ray results, its sample grids and best model from its latest checkpoint. What the
tracker already holds is not sent again, so a trial's metrics end up in it once."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import ResultGrid
from ray.tune.result import AUTO_RESULT_KEYS

from diffusion_core.loop import BEST, samples_file
from sweep.artifacts import BEST_MODEL, CHECKPOINTS, SAMPLES_KEY
from sweep.tracking import TRIAL_TAG, RunRecord, Tracker

log = logging.getLogger(__name__)
NOT_METRICS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag", "step", "node_id", "run_id", "tracking_queued"}


def _rows(result: Any) -> dict[int, dict[str, float]]:
    """The trial's reported rungs: step -> the numeric metrics it reported there."""
    frame = result.metrics_dataframe
    if frame is None or "step" not in frame:
        return {}
    rows = {}
    for row in frame.to_dict("records"):
        rows[int(row["step"])] = {k: float(v) for k, v in row.items() if k not in NOT_METRICS and not k.startswith("config/")
                                  and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    return rows


def _replay_trial(tracker: Tracker, run_id: str, result: Any, rows: dict[int, dict[str, float]]) -> int:
    """Send the rungs, grids and best model the tracker lacks; returns how many records were sent."""
    logged = {p.step for p in tracker.history(run_id, "fid")}
    run, sent = tracker.run(run_id), 0
    for step in sorted(set(rows) - logged):
        run.log_metrics(rows[step], step)
        sent += 1
    if result.checkpoint is None:
        return sent
    with result.checkpoint.as_directory() as folder:
        for step in sorted(set(rows) - tracker.image_steps(run_id, SAMPLES_KEY)):
            if (Path(folder) / samples_file(step)).is_file():
                run.log_image((Path(folder) / samples_file(step)).read_bytes(), SAMPLES_KEY, step)
                sent += 1
        if (Path(folder) / BEST).is_file() and not tracker.has_artifact(run_id, BEST_MODEL):
            run.log_file(Path(folder) / BEST, CHECKPOINTS)
            sent += 1
    return sent


def replay(tracker: Tracker, parent: RunRecord, results: ResultGrid) -> int:
    """Deliver what every trial of the sweep reported to Ray and the tracker lacks; returns the records sent. A trial
    whose run was never created gets one, under the parent, with its parameters."""
    runs = {r.tags.get(TRIAL_TAG): r.run_id for r in tracker.children(parent)}
    sent = 0
    for result in results:
        rows = _rows(result)
        trial_id = str((result.metrics or {}).get("trial_id", ""))
        if not rows or not trial_id:
            continue
        run_id = runs.get(trial_id)
        if run_id is None:
            run_id = tracker.trial_run(parent.experiment_id, parent.run_id, trial_id, trial_id, dict(result.config or {}), {}).run_id
        sent += _replay_trial(tracker, run_id, result, rows)
    if sent:
        log.warning("delivered %d tracking record(s) the trials could not send (the tracking store was away)", sent)
    return sent
