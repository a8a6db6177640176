"""The Ray Tune trainable: the one seam where a trial's sampled parameters become a Trainer.

Train to the next evaluation step, evaluate FID/KID, log to the trial's MLflow child run and
``tune.report`` the metrics together with a checkpoint; on a restart, continue from Tune's latest
checkpoint, reopening the same MLflow run (its id travels inside the checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from torchvision.io import encode_png

from diffusion_core.checkpoint import CheckpointError, save_atomic
from diffusion_core.config import RunConfig
from diffusion_core.evaluate import Evaluator, evaluate_bank
from diffusion_core.trainer import DivergenceError, Trainer
from sweep.config import SweepConfig
from sweep.sampling_study import SamplingStudyResult, describe, run_sampling_study
from sweep.tracking import BEST_CHECKPOINT, TrialRun

CHECKPOINT_FILE = "trainer.pt"
log = logging.getLogger(__name__)


def _older_local_checkpoints(checkpoint: tune.Checkpoint) -> list[Path]:
    """The trial's earlier checkpoints on local storage (Tune keeps ``num_to_keep``), newest first."""
    current = Path(checkpoint.path)
    if type(checkpoint.filesystem).__name__ != "LocalFileSystem" or not current.parent.is_dir():
        return []
    return sorted((p for p in current.parent.glob("checkpoint_*") if p.name < current.name), reverse=True)


def _restore(trainer: Trainer) -> dict[str, Any] | None:
    """Load Tune's latest checkpoint; if it is corrupt, the newest earlier one that loads."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        try:
            return trainer.load_checkpoint(Path(folder) / CHECKPOINT_FILE)
        except CheckpointError as exc:
            error = exc
    for older in _older_local_checkpoints(checkpoint):
        try:
            extra = trainer.load_checkpoint(older / CHECKPOINT_FILE)
        except CheckpointError:
            continue
        log.warning("%s; continuing from the previous good checkpoint %s (step %d)", error, older, trainer.step)
        return extra
    raise error


def _log_study(run: TrialRun, study: SamplingStudyResult, cfg: RunConfig) -> str:
    """Log a final-rung sampling study to the trial's run; returns its best settings as JSON."""
    log.info(describe(study, cfg))
    best = json.dumps(study.best_settings(cfg))
    run.log_table(study.table(), "sampling_study.json")
    run.set_tags({"sampling_best": best})
    return best


def run_trial(config: dict[str, Any], *, sweep: SweepConfig, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
    """Function trainable; ``config`` is the flat ``{key.path: value}`` dict sampled by Optuna."""
    cfg = sweep.run_config(config)
    context = tune.get_context()
    torch.set_num_threads(max(1, int(sweep.sweep.resources_per_trial.cpu)))
    trainer = Trainer(cfg)
    extra = _restore(trainer) or {}
    client = MlflowClient(tracking_uri)
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "worker_pid": str(os.getpid())}
    run = TrialRun(client, extra["mlflow_run_id"]) if "mlflow_run_id" in extra else TrialRun.find(client, experiment_id, parent_run_id, context.get_trial_id())
    if run is not None:
        run.reopen({**node, "restored_at_step": str(trainer.step)})
    else:
        run = TrialRun.create(client, experiment_id, parent_run_id, context.get_trial_name(), context.get_trial_id(), config,
                              {**node, "num_parameters": str(trainer.model.num_parameters())})
    best_fid = float(extra.get("best_fid", float("inf")))
    evaluator = Evaluator(cfg, trainer.device)
    weights = evaluator.features.weights
    run.set_tags({"inception_weights": str(weights.path), "inception_weights_sha256": weights.sha256})
    every = cfg.eval.every_steps
    try:
        while trainer.step < cfg.train.max_steps:
            started = time.perf_counter()
            target = min(cfg.train.max_steps, (trainer.step // every + 1) * every)
            losses = trainer.train_until(target)
            train_seconds = time.perf_counter() - started
            models = trainer.emas.models()
            bank = evaluate_bank(evaluator, models, trainer.schedule)
            result = bank.best
            metrics = {"loss": sum(losses) / len(losses), "train_seconds": train_seconds, **bank.metrics()}
            reported: dict[str, Any] = {}
            if trainer.step >= cfg.train.max_steps and sweep.sampling_search is not None:
                study = run_sampling_study(models[bank.best_rate], trainer.schedule, cfg, sweep.sampling_search,
                                           evaluator.features, trainer.device)
                metrics.update(study.metrics())
                reported["sampling_best"] = _log_study(run, study, cfg)
            run.log_metrics(metrics, trainer.step)
            run.log_png(encode_png(result.grid).numpy().tobytes(), f"samples/step_{trainer.step:07d}.png")
            with tempfile.TemporaryDirectory() as folder:
                if result.fid < best_fid:
                    best_fid = result.fid
                    best = save_atomic({"ema": models[bank.best_rate].state_dict(), "ema_rate": bank.best_rate, "step": trainer.step,
                                        "fid": result.fid, "config": cfg.model_dump_json()}, Path(folder) / Path(BEST_CHECKPOINT).name)
                    run.log_file(best, str(Path(BEST_CHECKPOINT).parent))
                trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE, extra={"mlflow_run_id": run.run_id, "best_fid": best_fid})
                tune.report(
                    {**metrics, **reported, "step": trainer.step, "best_fid": best_fid, "mlflow_run_id": run.run_id, "node_id": node["node_id"]},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )
    except DivergenceError as exc:
        run.finish("FAILED", "failed", f"diverged: {exc}")
        raise
    except Exception:
        run.set_tags({"diffusion_sweep.status": "failed", "failure_reason": traceback.format_exc()[-5000:]})
        raise
