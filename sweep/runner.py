"""Ray Tune with OptunaSearch (seeded TPE) and ASHA on FID; MLflow parent/child runs; the summary."""
from __future__ import annotations

import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from diffusion_core.config import RunConfig
from diffusion_core.evaluate import Evaluator
from sweep.config import SweepConfig
from sweep.interpolations import log_best_interpolations
from sweep.preflight import Checked
from sweep.report import report_after_sweep
from sweep.space import categorical_label, make_space
from sweep.summary import SweepSummary, TrialOutcome, outcome_label, summarize
from sweep.tracking import RESOLVED_SPACE, TRIAL_TAG, SweepTracker, TrialRun
from sweep.trainable import run_trial

METRIC, MODE = "fid", "min"
RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


class RungAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial ASHA stopped before ``max_step`` as PRUNED, not COMPLETE.

    Ray would otherwise hand TPE the early-rung FID as if it were final. As PRUNED (with the rung FIDs
    reported as intermediate values), TPE ranks it below every trial that ran to the end and above
    trials pruned at earlier rungs (optuna's ``_get_pruned_trial_score``): what the searcher learns
    is "how far did this configuration get", which is comparable across rungs.
    """

    def __init__(self, *args: Any, max_step: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_step = max_step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = bool(result) and not error and int(result.get("step", self._max_step)) < self._max_step
        if not stopped_early or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class MlflowStatusCallback(tune.Callback):
    """Sets each child run's final status as Ray decides it: completed, pruned by ASHA, or failed."""

    def __init__(self, tracking_uri: str, max_steps: int) -> None:
        self.tracking_uri, self.max_steps = tracking_uri, max_steps

    def _settle(self, trial: Any, error: bool) -> None:
        from mlflow.tracking import MlflowClient

        result = trial.last_result or {}
        run_id = result.get("mlflow_run_id")
        if not run_id:
            return
        label = outcome_label(int(result.get("step", 0)), self.max_steps, error)
        reason = str(getattr(trial, "error_message", "") or "")[-2000:] if error else ("stopped by ASHA at step %d" % result.get("step", 0) if label == "pruned" else None)
        TrialRun(MlflowClient(self.tracking_uri), run_id).finish(RUN_STATUS[label], label, reason)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._settle(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._settle(trial, error=True)


def make_sampler(cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """``sweep.search``: seeded TPE after ``n_startup_trials`` random trials, seeded random search, or every
    combination of the choice dimensions once, in a seeded order."""
    if cfg.sweep.search == "random":
        return optuna.samplers.RandomSampler(seed=cfg.sweep.seed)
    if cfg.sweep.search == "grid":
        grid = {d.path: [categorical_label(c) for c in d.choices or []] for d in cfg.dimensions}
        return optuna.samplers.GridSampler(grid, seed=cfg.sweep.seed)
    return optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=cfg.sweep.n_startup_trials)


def make_scheduler(cfg: SweepConfig, base: RunConfig) -> TrialScheduler:
    """``sweep.scheduler``: ASHA on FID with rungs in training steps, or FIFO (every trial runs to the end)."""
    if cfg.sweep.scheduler.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step", metric=METRIC, mode=MODE, max_t=base.train.max_steps,
        grace_period=cfg.grace_period, reduction_factor=cfg.sweep.scheduler.reduction_factor,
    )


def build_tuner(cfg: SweepConfig, base: RunConfig, checked: Checked, tracker: SweepTracker, resume: bool) -> tune.Tuner:
    resources = cfg.sweep.resources_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=cfg, tracking_uri=tracker.tracking_uri,
                             experiment_id=tracker.experiment_id, parent_run_id=tracker.parent_run_id),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )
    if resume:
        return tune.Tuner.restore(checked.experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    max_steps = base.train.max_steps
    searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric=METRIC, mode=MODE, max_step=max_steps,
                                     sampler=make_sampler(cfg))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's default console output ignores progress_reporter
    reporter = tune.CLIReporter(
        metric_columns={"step": "step", "fid": "last FID", "best_fid": "best FID", "kid": "KID", "loss": "loss"},
        parameter_columns=[d.path for d in cfg.dimensions], max_report_frequency=15, sort_by_metric=True,
    )
    reporter.set_search_properties(METRIC, MODE)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, cfg.sweep.max_concurrent), scheduler=make_scheduler(cfg, base),
                                    num_samples=cfg.sweep.num_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=checked.storage_path, progress_reporter=reporter, verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[MlflowStatusCallback(tracker.tracking_uri, max_steps)],
        ),
    )


def settle_orphans(tracker: SweepTracker, summary: SweepSummary) -> None:
    """Child runs still RUNNING (a killed driver never told them) get the status Ray recorded."""
    by_trial = {t.trial_id: t for t in summary.trials}
    for run in tracker.children():
        if run.info.status != "RUNNING":
            continue
        outcome = by_trial.get(run.data.tags.get(TRIAL_TAG, ""))
        label = outcome.status if outcome else "failed"
        TrialRun(tracker.client, run.info.run_id).finish(RUN_STATUS[label], label, None if outcome else "trial lost with the driver")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial_extras(best: TrialOutcome) -> list[str]:
    """What the best trial found without extra trainings: its EMA rate and its best sampling settings."""
    lines = [f"best EMA rate: {best.ema_rate:g}"] if best.ema_rate is not None else []
    if best.sampling_best is not None:
        settings = ", ".join(f"{k.removeprefix('eval.')}={_short(v)}" for k, v in best.sampling_best.items())
        lines.append(f"best sampling: {settings} (study FID {best.sampling_best_fid:.2f} vs {best.sampling_default_fid:.2f} "
                     "with the configured sampler)")
    elif best.status == "completed":
        lines.append("best sampling: no sampling study (declare eval.search in the sweep file to run one)")
    return lines


def print_summary(cfg: SweepConfig, summary: SweepSummary, checked: Checked, tracker: SweepTracker) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"sweep {cfg.name}: {len(summary.trials)} trials")
    for column in ("trial", "status", "step", "best FID", *[d.path.rsplit(".", 1)[-1] for d in cfg.dimensions]):
        table.add_column(column)
    for t in sorted(summary.trials, key=lambda t: t.best_fid):
        table.add_row(t.trial_id, t.status, str(t.step), f"{t.best_fid:.2f}" if math.isfinite(t.best_fid) else "-",
                      *[_short(t.params.get(d.path, "-")) for d in cfg.dimensions])
    console.print(table)
    best = summary.best
    if best:
        console.print(f"[bold]best FID {best.best_fid:.2f}[/] (trial {best.trial_id}, step {best.step}): {best.params}")
        for line in best_trial_extras(best):
            console.print(f"  {line}")
    console.print(f"trials: {summary.count('completed')} completed, {summary.count('pruned')} pruned by ASHA, {summary.count('failed')} failed")
    for t in summary.trials:
        if t.error:
            console.print(f"  failed {t.trial_id}: {t.error}")
    console.print(f"Ray results: {checked.experiment_path}")
    console.print(f"MLflow: {tracker.tracking_uri}, experiment {cfg.experiment!r}, parent run {tracker.parent_run_id}")
    ui = f"mlflow ui --backend-store-uri {tracker.tracking_uri}" if tracker.tracking_uri.startswith("sqlite") else f"open {tracker.tracking_uri}"
    console.print(f"Browse: {ui}  (then http://127.0.0.1:5000)")


def write_up(cfg: SweepConfig, checked: Checked, tracker: SweepTracker, summary: SweepSummary) -> None:
    """Close the parent run with the sweep's outcome, log the best trial's interpolation grids, print the
    summary and write the HTML report."""
    settle_orphans(tracker, summary)
    best = summary.best
    metrics = {f"trials_{s}": summary.count(s) for s in ("completed", "pruned", "failed")}
    if best:
        metrics["best_fid"] = best.best_fid
    tags = {"best_trial": best.trial_id if best else "", "best_run_id": (best.run_id or "") if best else ""}
    if best and best.ema_rate is not None:
        tags["best_ema_rate"] = f"{best.ema_rate:g}"
    if best and best.sampling_best is not None:
        tags["best_sampling"] = json.dumps(best.sampling_best)
        metrics["best_sampling_fid"] = best.sampling_best_fid
    tracker.finish_parent(metrics, best.params if best else {}, tags)
    log_best_interpolations(tracker, summary)
    print_summary(cfg, summary, checked, tracker)
    report_after_sweep(tracker.tracking_uri, cfg, checked.experiment_path, tracker.parent_run_id)


def open_tracking(cfg: SweepConfig, checked: Checked, resume: bool) -> SweepTracker:
    """The sweep's MLflow parent run, with its search space attached (a new SQLite store is created and
    migrated first: ~3 s of the driver's start)."""
    tracker = SweepTracker(checked.tracking_uri, cfg.experiment)
    tracker.start_parent(cfg.name, resume, {"source_file": cfg.source, "inception_weights_sha256": checked.weights.sha256})
    if not resume:
        tracker.client.log_text(tracker.parent_run_id, Path(cfg.source).read_text(), "search_space.yaml")
        tracker.client.log_text(tracker.parent_run_id, yaml.safe_dump(cfg.model_dump(), sort_keys=False), RESOLVED_SPACE)
    return tracker


def run_sweep(cfg: SweepConfig, checked: Checked, address: str | None, resume: bool) -> SweepSummary:
    """Run the sweep and write it up. Independent driver work overlaps: MLflow's store opens while the
    reference statistics load and Ray starts, and Ray's processes stop while the sweep is written up
    (measured on the smoke sweep, 2 cores: ~0.5 s and ~1.5 s of wall time)."""
    base = cfg.run_config({})
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-driver") as background:
        opening = background.submit(open_tracking, cfg, checked, resume)
        if address is None:
            print("computing (or loading) the FID reference statistics once, before the trials start ...", flush=True)
            with Progress() as progress:
                Evaluator(base, "cpu", progress=progress).reference  # noqa: B018 -- fills the shared on-disk cache
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        tracker = opening.result()
        try:
            results = build_tuner(cfg, base, checked, tracker, resume).fit()
        except KeyboardInterrupt:
            print(f"interrupted: continue with `python -m sweep.launch {cfg.source} --resume`", file=sys.stderr)
            raise
        stopping = background.submit(ray.shutdown)  # nothing below needs Ray: the results are on disk
        summary = summarize(results, base.train.max_steps)
        write_up(cfg, checked, tracker, summary)
        stopping.result()
    return summary
