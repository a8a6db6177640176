"""``python -m sweep.finalize NAME``: train a finished sweep's best configuration to the full budget and register it.

The winner is the sweep's best trial: its resolved run config and EMA rate (from its best model file) and the
best sampling settings its sampling study found. It trains for ``final.steps`` (``--steps``), data-parallel over
``final.workers`` (``--workers``) Ray Train workers (``TorchTrainer``, DDP; gloo on CPUs), evaluating FID/KID on
``final.num_samples`` every ``final.every_steps``, as a run under the sweep's parent run (tag ``role: final``).
Interrupted, the same command continues from the latest checkpoint; with a larger ``--steps`` it trains on. The
min-FID model is then registered in MLflow's Model Registry under the sweep's name with the alias ``champion``.
``--register-trial ID`` registers a trial's best model instead (no alias), without training.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from pydantic import ValidationError
from ray.train.torch import TorchTrainer

from diffusion_core.checkpoint import CheckpointError, load_checkpoint
from diffusion_core.config import ConfigError, RunConfig, error_line
from diffusion_core.loop import BEST
from sweep.artifacts import download_best_model
from sweep.config import SweepConfig
from sweep.final_training import FinalJob, train_final
from sweep.registry import CHAMPION, Registered, register, resolve_model
from sweep.report.collect import resolved_sweep
from sweep.tracking import RunRecord, Tracker, TrackingError, open_existing_tracker

EXIT_CONFIG, EXIT_RUNTIME = 2, 1
REGISTERED_TAG, REGISTERED_STEP_TAG = "registered_model", "registered_step"  # on the final run: what was registered


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.finalize", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("name", help="the sweep's name (the YAML file's `name`)")
    p.add_argument("--steps", type=int, help="training steps (default: the sweep's final.steps, else train.max_steps)")
    p.add_argument("--workers", type=int, help="data-parallel workers (default: the sweep's final.workers)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="the sweep's MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
    p.add_argument("--storage-path", help="Ray results folder (default: the sweep's sweep.storage_path)")
    p.add_argument("--address", help="Ray cluster to join ('auto', or host:port); default: a local Ray of its own (or $RAY_ADDRESS)")
    p.add_argument("--register-trial", metavar="RUN_OR_TRIAL_ID", help="register this trial's best model (no training, no alias)")
    return p.parse_args(argv)


@dataclass
class Winner:
    """A finished sweep's best trial, as the final training needs it."""

    parent: RunRecord
    sweep: SweepConfig
    run_id: str  # the best trial's run
    cfg: RunConfig  # its resolved run config
    ema_rate: float
    sampling: dict[str, Any]  # its best sampling settings, {"eval.<key>": value} (empty: its own)


def find_winner(tracker: Tracker, experiment: str, name: str) -> Winner:
    parent = tracker.find_sweep(experiment, name)
    run_id = parent.tags.get("best_run_id")
    if not run_id:
        raise TrackingError(f"sweep {name!r} has no best trial (parent run {parent.run_id}, {parent.status}); finalize a finished sweep")
    _, cfg, info = download_best_model(tracker, run_id)
    sampling = json.loads(parent.tags["best_sampling"]) if parent.tags.get("best_sampling") else {}
    return Winner(parent, resolved_sweep(tracker, parent.run_id), run_id, cfg, float(info["ema_rate"]), sampling)


def final_config(winner: Winner, steps: int | None, workers: int) -> RunConfig:
    """The winner's run config with the final budget: steps, its EMA rate only, its best sampling settings, and the
    final evaluation's cadence and sample count."""
    final, cfg = winner.sweep.final, winner.cfg
    sampling = {key.removeprefix("eval."): value for key, value in winner.sampling.items()}
    evaluation = {**cfg.eval.model_dump(), **sampling, "every_steps": final.every_steps or cfg.eval.every_steps,
                  "num_samples": final.num_samples or cfg.eval.num_samples}
    train = {**cfg.train.model_dump(), "max_steps": steps or final.steps or cfg.train.max_steps, "ema_rates": [winner.ema_rate]}
    try:
        result = RunConfig.model_validate({**cfg.model_dump(), "name": f"{winner.sweep.name}-final", "train": train, "eval": evaluation})
    except ValidationError as exc:
        raise ConfigError(error_line(f"the final run of sweep {winner.sweep.name!r}", exc)) from None
    if result.train.batch_size % workers:
        raise ConfigError(f"--workers {workers}: train.batch_size {result.train.batch_size} does not split into {workers} "
                          "equal shards; choose a divisor of it")
    return result


def scaling(sweep: SweepConfig, workers: int) -> ray.train.ScalingConfig:
    """``workers`` data-parallel workers with ``final.resources_per_worker`` (default: a trial's CPUs, one whole
    GPU when trials used GPUs)."""
    trial = sweep.sweep.resources_per_trial
    wanted = sweep.final.resources_per_worker or trial.model_copy(update={"gpu": 1 if trial.gpu > 0 else 0})
    if wanted.gpu != int(wanted.gpu):
        raise ConfigError(f"{sweep.source}: final.resources_per_worker.gpu: {wanted.gpu:g}; DDP needs whole GPUs per worker")
    resources = {"CPU": wanted.cpu, **({"GPU": wanted.gpu} if wanted.gpu else {})}
    return ray.train.ScalingConfig(num_workers=workers, use_gpu=wanted.gpu > 0, resources_per_worker=resources)


def storage_folder(args: argparse.Namespace, sweep: SweepConfig) -> str:
    """The sweep's Ray results folder (the final training keeps its checkpoints inside it)."""
    root = args.storage_path or sweep.sweep.storage_path
    folder = root if "://" in root else str(Path(root).expanduser().resolve())
    return f"{folder.rstrip('/')}/{sweep.name}"


def train(args: argparse.Namespace, tracker: Tracker, winner: Winner, cfg: RunConfig, workers: int, key: str) -> ray.train.Result:
    """Run the final training on Ray Train (a local Ray of its own unless ``--address``); ``key`` names the final
    run among the sweep's runs (one per winning trial, so that a rerun continues it)."""
    scale = scaling(winner.sweep, workers)
    params = {**{k.removeprefix("best."): v for k, v in winner.parent.tags.items() if k.startswith("best.")},
              "best_trial_run_id": winner.run_id}
    job = FinalJob(cfg.model_dump_json(), tracker.uri, winner.parent.experiment_id, winner.parent.run_id, key=key,
                   name=f"final: the best trial of {winner.sweep.name}", params=params,
                   tags={"final.steps": str(cfg.train.max_steps), "final.workers": str(workers)},
                   threads=max(1, int(scale.resources_per_worker.get("CPU", 1))))
    run_config = ray.train.RunConfig(name=f"final-{winner.run_id[:8]}", storage_path=storage_folder(args, winner.sweep),
                                     failure_config=ray.train.FailureConfig(max_failures=winner.sweep.sweep.max_failures),
                                     checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                     worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})  # a print once, not twice
    # Ray Train's placement-group cleaner polls the state API, which a Ray without its dashboard (pip's ray[tune])
    # lacks: its warning every few seconds would bury the progress lines
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, logging_level="WARNING",
             logging_config=ray.LoggingConfig(log_level="ERROR"))
    try:
        return TorchTrainer(train_final, train_loop_config=job.config(), scaling_config=scale, run_config=run_config).fit()
    finally:
        ray.shutdown()


def register_final(tracker: Tracker, winner: Winner, result: ray.train.Result, folder: Path) -> tuple[str, Registered | None]:
    """Register the final run's min-FID model (unless this one is registered already); returns the run id and the
    new version. The final run is closed as completed."""
    run_id = result.metrics["run_id"]
    with result.checkpoint.as_directory() as checkpoint:
        best = Path(shutil.copy(Path(checkpoint) / BEST, folder / BEST))
    step = str(load_checkpoint(best, ("model",))["info"]["step"])
    run = tracker.run(run_id)
    registered = None
    if tracker.get_run(run_id).tags.get(REGISTERED_STEP_TAG) != step:
        tags = {"sweep": winner.sweep.name, "sweep_run_id": winner.parent.run_id, "role": "final", "trial_run_id": winner.run_id}
        registered = register(tracker, run_id, best, winner.sweep.name, tags, alias=CHAMPION)
        run.set_tags({REGISTERED_TAG: registered.uri, REGISTERED_STEP_TAG: step})
        tracker.run(winner.parent.run_id).set_tags({"final_run_id": run_id, "final_model": registered.uri})
    run.finish("completed")
    return run_id, registered


def finalize(args: argparse.Namespace, tracker: Tracker) -> None:
    winner = find_winner(tracker, args.experiment or args.name, args.name)
    workers = args.workers or winner.sweep.final.workers
    if workers < 1 or (args.steps is not None and args.steps < 1):
        raise ConfigError(f"--workers {workers} / --steps {args.steps}: both must be at least 1")
    cfg = final_config(winner, args.steps, workers)
    print(f"finalizing sweep {args.name!r}: best trial run {winner.run_id} (EMA rate {winner.ema_rate:g}) for "
          f"{cfg.train.max_steps} steps on {workers} worker(s); FID on {cfg.eval.num_samples} samples every {cfg.eval.every_steps} steps", flush=True)
    key = f"final-{winner.run_id}"
    try:
        result = train(args, tracker, winner, cfg, workers, key)
    except ray.train.TrainingFailedError as exc:
        with contextlib.suppress(TrackingError):  # no run when it failed before rank 0 opened one
            tracker.run(tracker.find_trial(key).run_id).finish("failed", str(exc)[-5000:])
        raise
    with tempfile.TemporaryDirectory() as folder:
        run_id, registered = register_final(tracker, winner, result, Path(folder))
    what = f"registered as {registered.uri} (alias {CHAMPION})" if registered else "already registered"
    print(f"final run {run_id}: best FID {result.metrics['best_fid']:.2f}; {what}")
    print(f'load it: mlflow.pyfunc.load_model("models:/{args.name}@{CHAMPION}"); '
          f"samples: python -m sweep.sample models:/{args.name}@{CHAMPION} --num 50000 --out samples/")


def register_trial(args: argparse.Namespace, tracker: Tracker) -> None:
    parent = tracker.find_sweep(args.experiment or args.name, args.name)
    run = tracker.find_trial(args.register_trial)
    with tempfile.TemporaryDirectory() as folder:
        model = resolve_model(run.run_id, tracker.uri, Path(folder))
        tags = {"sweep": args.name, "sweep_run_id": parent.run_id, "role": "trial"}
        registered = register(tracker, run.run_id, model, args.name, tags)
    print(f"trial run {run.run_id}: registered as {registered.uri}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        tracker = open_existing_tracker(args.tracking_uri)
        (register_trial if args.register_trial else finalize)(args, tracker)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (TrackingError, CheckpointError, ray.train.TrainingFailedError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
