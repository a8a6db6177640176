"""Publish a sweep's report: collect it through the tracker, analyse, render, write the HTML file beside the Ray
results and attach it to the sweep's parent run, with rank fidelity as parent-run metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import optuna

from sweep.artifacts import SAMPLES_KEY
from sweep.config import SweepConfig
from sweep.report.analyse import RungFidelity, sweep_fidelity
from sweep.report.collect import from_tracker
from sweep.report.model import Sweep
from sweep.report.render import Images, build_html, top_trials
from sweep.tracking import Tracker

REPORT_FILE = "sweep_report.html"
RHO_METRIC = "rank_fidelity_rho"


def default_output(storage_path: str, name: str) -> Path:
    """``<storage>/<name>/sweep_report.html`` beside the Ray results; the working folder for remote storage."""
    if "://" in storage_path:
        return Path.cwd() / f"{name}_{REPORT_FILE}"
    return Path(storage_path).expanduser().resolve() / name / REPORT_FILE


def fetch_images(tracker: Tracker, sweep: Sweep) -> Images:
    """The best trial's grid at every rung, and the top trials' grids at the latest rung they share."""
    best = sweep.best
    step, top = top_trials(sweep)
    wanted = {t.run_id for t in [*top, best] if t is not None and t.run_id}
    grids = {run_id: tracker.images(run_id, SAMPLES_KEY) for run_id in wanted}
    best_grids = grids.get(best.run_id, {}) if best else {}
    return Images(best_grids, step, [(t, grids[t.run_id][step]) for t in top if step in grids.get(t.run_id, {})])


def publish(tracker: Tracker, sweep: Sweep, out: Path) -> tuple[Path, list[RungFidelity]]:
    """Write the report to ``out``, attach it to the parent run, log rank fidelity as parent-run metrics
    (a point already logged is not logged again, so rerunning the report leaves the history as it was)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fidelity = sweep_fidelity(sweep)
    page = build_html(sweep, fidelity, fetch_images(tracker, sweep))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    parent = tracker.run(sweep.parent_run_id)
    parent.log_text(page, REPORT_FILE)
    logged = {(p.step, p.value) for p in tracker.history(sweep.parent_run_id, RHO_METRIC)}
    for r in fidelity:
        if r.rho is not None and (r.step, r.rho) not in logged:
            parent.log_metrics({RHO_METRIC: r.rho}, r.step)
    return out, fidelity


def report_after_sweep(tracker: Tracker, cfg: SweepConfig, experiment_path: str, parent_run_id: str) -> None:
    """At the end of a sweep: build and publish the report; a failure only warns (the results are safe in the
    tracker, and ``python -m sweep.report NAME`` rebuilds it)."""
    try:
        out = Path.cwd() / f"{cfg.name}_{REPORT_FILE}" if "://" in experiment_path else Path(experiment_path) / REPORT_FILE
        sweep, _ = from_tracker(tracker, cfg.experiment, cfg.name, cfg, parent_run_id)
        path, _ = publish(tracker, sweep, out)
        print(f"Report: {path}")
    except Exception as exc:
        print(f"warning: sweep report not built ({type(exc).__name__}: {exc}); retry with `python -m sweep.report {cfg.name}`", file=sys.stderr)
