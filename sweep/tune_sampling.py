"""``python -m sweep.tune_sampling RUN_OR_TRIAL_ID``: search sampling settings (sampler, steps, eta, guidance,
thresholding) on a finished trial's best EMA checkpoint, without retraining, and log the study to its MLflow run.

The dimensions come from the sweep's ``eval.search`` (read from the parent run's resolved_space.yaml), or from
``--space FILE``; ``--trials`` and ``--num-samples`` override its budget.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.config import ConfigError
from diffusion_core.inception_weights import InceptionWeightsError
from diffusion_core.metrics import InceptionFeatures
from diffusion_core.schedules import build_schedule
from diffusion_core.trainer import default_device
from sweep.artifacts import download_best_model
from sweep.config import SamplingSearch, load_sweep
from sweep.report.collect import RESOLVED_SPACE, resolved_sweep
from sweep.sampling_study import SamplingTrial, describe, run_sampling_study
from sweep.tracking import PARENT_TAG, RunRecord, Tracker, TrackingError, open_tracker, resolve_tracking_uri


def sweep_search(tracker: Tracker, run: RunRecord, space: str | None) -> SamplingSearch:
    """``eval.search`` of ``--space`` or, by default, of the sweep that made the run."""
    if space is not None:
        search, source = load_sweep(space).sampling_search, space
    else:
        parent = run.tags.get(PARENT_TAG)
        if not parent:
            raise TrackingError(f"run {run.run_id} has no parent sweep run; pass --space FILE")
        search, source = resolved_sweep(tracker, parent).sampling_search, f"sweep run {parent} ({RESOLVED_SPACE})"
    if search is None:
        raise ConfigError(f"{source}: eval.search: not declared; add sampling dimensions there (see docs/configuration.md) or pass --space FILE")
    return search


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.tune_sampling", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("run", help="the trial's MLflow run id, or its Ray Tune trial id")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--space", help="take eval.search from this sweep file instead of the run's own sweep")
    p.add_argument("--trials", type=int, help="override eval.search.trials")
    p.add_argument("--num-samples", type=int, help="override eval.search.num_samples")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tracker = open_tracker(resolve_tracking_uri(args.tracking_uri))
    device = default_device() if args.device == "auto" else torch.device(args.device)
    try:
        run = tracker.find_trial(args.run)
        model, cfg, _ = download_best_model(tracker, run.run_id)
        search = sweep_search(tracker, run, args.space)
        updates = {"trials": args.trials, "num_samples": args.num_samples}
        search = SamplingSearch.model_validate({**search.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
        features = InceptionFeatures(cfg.eval.inception_weights, device=device)
    except (TrackingError, CheckpointError, ConfigError, InceptionWeightsError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"run {run.run_id}: best EMA checkpoint; {features.describe()}")

    def show(trial: SamplingTrial) -> None:
        settings = ", ".join(f"{k.removeprefix('eval.')}={v}" for k, v in trial.params.items()) or "the run's own settings"
        print(f"  FID {trial.fid:8.2f}  KID {trial.kid:.4f}  {trial.seconds:5.1f}s  {settings}", flush=True)

    study = run_sampling_study(model.to(device), build_schedule(cfg.diffusion).to(device), cfg, search, features, device, on_trial=show)
    tracked = tracker.run(run.run_id)
    tracked.log_table(study.table(), "sampling_study_cli.json")
    tracked.set_tags({"sampling_best_cli": json.dumps(study.best_settings(cfg))})
    print(describe(study, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
