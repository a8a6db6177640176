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
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.config import ConfigError, RunConfig
from diffusion_core.inception_weights import InceptionWeightsError
from diffusion_core.metrics import InceptionFeatures
from diffusion_core.trainer import build_schedule, default_device
from sweep.config import SamplingSearch, load_sweep
from sweep.sampling_study import SamplingTrial, describe, run_sampling_study
from sweep.tracking import BEST_CHECKPOINT, RESOLVED_SPACE, TRIAL_TAG, TrialRun, load_best_model, load_resolved_sweep, resolve_tracking_uri


class NotFoundError(RuntimeError):
    """The run, its checkpoint or its search space cannot be found."""


def find_run(client: MlflowClient, key: str) -> str:
    """A child run's id from its MLflow run id or its Ray Tune trial id."""
    try:
        return client.get_run(key).info.run_id
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{TRIAL_TAG}` = '{key}'", max_results=2) if experiments else []
    if not runs:
        raise NotFoundError(f"{key}: no MLflow run or trial with this id in {client.tracking_uri} (pass --tracking-uri?)")
    return runs[0].info.run_id


def load_network(client: MlflowClient, run_id: str) -> tuple[RunConfig, torch.nn.Module]:
    """The run config and best EMA network of the run's ``checkpoints/best_ema.pt`` artifact."""
    try:
        model, cfg = load_best_model(client, run_id)
    except (MlflowException, OSError):
        raise NotFoundError(f"run {run_id}: no {BEST_CHECKPOINT} artifact (the trial never finished an evaluation)") from None
    return cfg, model


def sweep_search(client: MlflowClient, run_id: str, space: str | None) -> SamplingSearch:
    """``eval.search`` of ``--space`` or, by default, of the sweep that made the run."""
    if space is not None:
        search, source = load_sweep(space).sampling_search, space
    else:
        parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        if not parent:
            raise NotFoundError(f"run {run_id} has no parent sweep run; pass --space FILE")
        try:
            search, source = load_resolved_sweep(client, parent).sampling_search, f"sweep run {parent} ({RESOLVED_SPACE})"
        except (MlflowException, OSError):
            raise NotFoundError(f"sweep run {parent}: no {RESOLVED_SPACE} artifact; pass --space FILE") from None
    if search is None:
        raise ConfigError(f"{source}: eval.search: not declared; add sampling dimensions there (see README) or pass --space FILE")
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
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri))
    device = default_device() if args.device == "auto" else torch.device(args.device)
    try:
        run_id = find_run(client, args.run)
        cfg, model = load_network(client, run_id)
        search = sweep_search(client, run_id, args.space)
        updates = {"trials": args.trials, "num_samples": args.num_samples}
        search = SamplingSearch.model_validate({**search.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
        features = InceptionFeatures(cfg.eval.inception_weights, device=device)
    except (NotFoundError, CheckpointError, ConfigError, InceptionWeightsError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"run {run_id}: best EMA checkpoint; {features.describe()}")

    def show(trial: SamplingTrial) -> None:
        settings = ", ".join(f"{k.removeprefix('eval.')}={v}" for k, v in trial.params.items()) or "the run's own settings"
        print(f"  FID {trial.fid:8.2f}  KID {trial.kid:.4f}  {trial.seconds:5.1f}s  {settings}", flush=True)

    study = run_sampling_study(model.to(device), build_schedule(cfg).to(device), cfg, search, features, device, on_trial=show)
    run = TrialRun(client, run_id)
    run.log_table(study.table(), "sampling_study_cli.json")
    run.set_tags({"sampling_best_cli": json.dumps(study.best_settings(cfg))})
    print(describe(study, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
