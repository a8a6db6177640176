"""Ray Tune with OptunaSearch (seeded TPE) and ASHA on FID; the sweep's parent run and its trials' statuses in
the tracker; the summary at the end."""
from __future__ import annotations

import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import yaml
from optuna.trial import TrialState
from ray import tune
from ray.tune import ResultGrid
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from rich.progress import Progress

from diffusion_core.config import ConfigError, RunConfig
from diffusion_core.evaluate import Evaluator
from sweep.config import SweepConfig
from sweep.interpolations import log_best_interpolations
from sweep.preflight import Checked
from sweep.pruning import NoiseAwareASHA
from sweep.replay import replay
from sweep.report.collect import RESOLVED_SPACE, from_results
from sweep.report.model import Sweep, outcome
from sweep.report.publish import report_after_sweep
from sweep.report.text import print_summary
from sweep.space import categorical_label, make_space
from sweep.tracking import TRIAL_TAG, TrackedRun, Tracker, open_tracker
from sweep.trainable import run_trial
from sweep.uris import redact

METRIC, MODE = "fid", "min"
log = logging.getLogger(__name__)
NOISE_METRIC = "fid_std"  # the rung FID's bootstrap standard deviation (diffusion_core.fid_bootstrap)
STUDY_STORAGE_TAG, STUDY_NAME_TAG = "optuna_storage", "optuna_study"  # the parent run's pointer to the stored study


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


class TrialStatusCallback(tune.Callback):
    """Ends each trial's tracked run as Ray decides it: completed, pruned by ASHA, or failed."""

    def __init__(self, tracking_uri: str, max_steps: int) -> None:
        self.tracking_uri, self.max_steps = tracking_uri, max_steps

    def _settle(self, trial: Any, error: bool) -> None:
        result = trial.last_result or {}
        run_id = result.get("run_id")
        if not run_id:
            return
        step = int(result.get("step", 0))
        label = outcome(step, self.max_steps, error)
        reason = str(getattr(trial, "error_message", "") or "")[-2000:] if error else (f"stopped by ASHA at step {step}" if label == "pruned" else None)
        try:
            open_tracker(self.tracking_uri).run(run_id).finish(label, reason)
        except Exception as exc:  # Ray re-raises a callback's error and ends the sweep: the write-up settles it instead
            log.warning("trial %s: status not recorded (%s); set when the sweep is written up", trial.trial_id, str(exc).splitlines()[0][:200])

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
    """``sweep.scheduler``: ASHA on FID with rungs in training steps (noise-aware: ties with the cutoff within the
    rung FID's own noise go on), or FIFO (every trial runs to the end)."""
    scheduler = cfg.sweep.scheduler
    if scheduler.type == "fifo":
        return FIFOScheduler()
    asha = {"time_attr": "step", "metric": METRIC, "mode": MODE, "max_t": base.train.max_steps,
            "grace_period": cfg.grace_period, "reduction_factor": scheduler.reduction_factor}
    if scheduler.noise_aware:
        return NoiseAwareASHA(noise_metric=NOISE_METRIC, z=scheduler.noise_z, **asha)
    return ASHAScheduler(**asha)


def build_search(cfg: SweepConfig, base: RunConfig, storage: optuna.storages.BaseStorage | None = None) -> tuple[ConcurrencyLimiter, TrialScheduler]:
    """The searcher (Optuna behind a concurrency limit, its study in ``storage``, else in memory) and the scheduler
    exactly as the run uses them; Ray's and Optuna's own argument checks run here, so ``--dry-run`` meets them too
    (one ConfigError line), without creating the study."""
    try:
        searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric=METRIC, mode=MODE, max_step=base.train.max_steps,
                                         sampler=make_sampler(cfg), points_to_evaluate=enqueued_points(cfg) or None,
                                         storage=storage, study_name=cfg.name)
        return ConcurrencyLimiter(searcher, cfg.sweep.max_concurrent), make_scheduler(cfg, base)
    except (ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(f"{cfg.source}: sweep: Ray or Optuna refuses the search ({str(exc).splitlines()[0] or type(exc).__name__})") from None


def enqueued_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """``sweep.enqueue`` as Optuna's fixed parameters (a non-primitive choice by its label, as the study holds it)."""
    kinds = {d.path: d.kind for d in cfg.dimensions}
    return [{path: categorical_label(v) if kinds[path] == "choice" else v for path, v in point.items()} for point in cfg.sweep.enqueue]


def study_storage(cfg: SweepConfig) -> optuna.storages.RDBStorage:
    """The sweep's study in an RDB storage (its SQLite folder created), so optuna-dashboard can open it."""
    url = cfg.study_storage
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)


@dataclass
class SweepTracking:
    """The sweep in the tracker: the store, the sweep's experiment and its parent run."""

    tracker: Tracker
    experiment_id: str
    parent: TrackedRun


def build_tuner(cfg: SweepConfig, base: RunConfig, checked: Checked, tracking: SweepTracking, resume: bool) -> tune.Tuner:
    resources = cfg.sweep.resources_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=cfg, tracking_uri=tracking.tracker.uri, experiment_id=tracking.experiment_id,
                             parent_run_id=tracking.parent.run_id, experiment_path=checked.experiment_path),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )
    if resume:
        return tune.Tuner.restore(checked.experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    max_steps = base.train.max_steps
    searcher, scheduler = build_search(cfg, base, study_storage(cfg))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's default console output ignores progress_reporter
    reporter = tune.CLIReporter(
        metric_columns={"step": "step", "fid": "last FID", "best_fid": "best FID", "kid": "KID", "loss": "loss"},
        parameter_columns=[d.path for d in cfg.dimensions], max_report_frequency=15, sort_by_metric=True,
    )
    reporter.set_search_properties(METRIC, MODE)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=cfg.sweep.num_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=checked.storage_path, progress_reporter=reporter, verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[TrialStatusCallback(tracking.tracker.uri, max_steps)],
        ),
    )


def settle_orphans(tracking: SweepTracking, sweep: Sweep) -> None:
    """Trial runs still RUNNING (a killed driver never told them) get the outcome Ray recorded."""
    by_trial = {t.trial_id: t for t in sweep.trials}
    parent = tracking.tracker.get_run(tracking.parent.run_id)
    for run in tracking.tracker.children(parent):
        if run.status != "RUNNING":
            continue
        trial = by_trial.get(run.tags.get(TRIAL_TAG, ""))
        tracking.tracker.run(run.run_id).finish(trial.status if trial else "failed", None if trial else "trial lost with the driver")


def finish_parent(tracking: SweepTracking, sweep: Sweep) -> None:
    """Close the parent run with the sweep's outcome: counts, the best FID, and the best trial's parameters,
    run, EMA rate and sampling settings."""
    best = sweep.best
    metrics = {f"trials_{s}": sweep.count(s) for s in ("completed", "pruned", "failed")}
    tags: dict[str, Any] = {"best_trial": best.trial_id if best else "", "best_run_id": (best.run_id or "") if best else ""}
    if best:
        metrics["best_fid"] = best.best_fid
        tags.update({f"best.{k}": v for k, v in best.params.items()})
    if best and best.ema_rate is not None:
        tags["best_ema_rate"] = f"{best.ema_rate:g}"
    if best and best.sampling_best is not None:
        tags["best_sampling"] = json.dumps(best.sampling_best)
        metrics["best_sampling_fid"] = best.metrics["sampling_best_fid"]
    tracking.parent.log_metrics(metrics, 0)
    tracking.parent.set_tags(tags)
    tracking.parent.finish("completed")


def write_up(cfg: SweepConfig, checked: Checked, tracking: SweepTracking, sweep: Sweep, results: ResultGrid) -> None:
    """Deliver what the trials could not send, close the trial runs and the parent run with the sweep's outcome, log
    the best trial's interpolation grids, write the HTML report and print the summary. A tracking store that is
    away at the end costs nothing but a warning: the results are in Ray's folder, and ``--resume`` delivers them."""
    uri = redact(tracking.tracker.uri)
    try:
        replay(tracking.tracker, tracking.tracker.get_run(tracking.parent.run_id), results)
        settle_orphans(tracking, sweep)
        finish_parent(tracking, sweep)
        log_best_interpolations(tracking.tracker, sweep)
        report_after_sweep(tracking.tracker, cfg, checked.experiment_path, tracking.parent.run_id)
    except Exception as exc:
        print(f"warning: the tracking store {uri} did not answer ({str(exc).splitlines()[0][:200]}); the sweep's results are in "
              f"{checked.experiment_path}: when it is back, `python -m sweep.launch {cfg.source} --resume` delivers them", file=sys.stderr)
    ui = f"mlflow ui --backend-store-uri {uri}, then " if uri.startswith("sqlite") else ""
    print_summary(sweep, [f"Ray results: {checked.experiment_path}",
                          f"MLflow: {uri}, experiment {cfg.experiment!r}, parent run {tracking.parent.run_id}",
                          f"Browse: {ui}{redact(tracking.tracker.runs_page(tracking.experiment_id))}",
                          f"Optuna study {cfg.name!r}: optuna-dashboard {redact(cfg.study_storage)}"])


def open_tracking(cfg: SweepConfig, checked: Checked, resume: bool) -> SweepTracking:
    """The sweep's parent run, with its search space attached (a new SQLite store is created and migrated first:
    ~3 s of the driver's start)."""
    tracker = open_tracker(checked.tracking_uri)
    experiment_id = tracker.experiment(cfg.experiment)
    tags = {"source_file": cfg.source, "inception_weights_sha256": checked.weights.sha256,
            STUDY_STORAGE_TAG: cfg.study_storage, STUDY_NAME_TAG: cfg.name}
    parent = tracker.start_sweep(experiment_id, cfg.name, resume, tags)
    if not resume:
        parent.log_text(redact(Path(cfg.source).read_text()), "search_space.yaml")
        parent.log_text(yaml.safe_dump(cfg.resolved(), sort_keys=False), RESOLVED_SPACE)
    elif checked.resume_changes:
        parent.set_tags({"resume_changes": "; ".join(f"{k}: {old} -> {new}" for k, (old, new) in checked.resume_changes.items())})
    return SweepTracking(tracker, experiment_id, parent)


def run_sweep(cfg: SweepConfig, checked: Checked, address: str | None, resume: bool) -> Sweep:
    """Run the sweep and write it up. Independent driver work overlaps: the tracking store opens while the
    reference statistics load and Ray starts, and Ray's processes stop while the sweep is written up."""
    base = cfg.run_config({})
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-driver") as background:
        opening = background.submit(open_tracking, cfg, checked, resume)
        if address is None:
            print("computing (or loading) the FID reference statistics once, before the trials start ...", flush=True)
            with Progress() as progress:
                Evaluator(base, "cpu", progress=progress).reference  # noqa: B018 -- fills the shared on-disk cache
        # "local": a Ray of this sweep's own, never whatever cluster `ray start` last recorded on the machine
        ray.init(address=address or "local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        tracking = opening.result()
        print(f"MLflow runs of the sweep: {tracking.tracker.runs_page(tracking.experiment_id)}", flush=True)
        try:
            results = build_tuner(cfg, base, checked, tracking, resume).fit()
        except KeyboardInterrupt:
            print(f"interrupted: continue with `python -m sweep.launch {cfg.source} --resume`", file=sys.stderr)
            raise
        stopping = background.submit(ray.shutdown)  # nothing below needs Ray: the results are on disk
        sweep = from_results(results, cfg)
        write_up(cfg, checked, tracking, sweep, results)
        stopping.result()
    return sweep
