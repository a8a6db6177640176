"""The Ray Tune trainable, a thin adapter: a trial's sampled parameters -> the rung loop -> ``tune.report``.

Each rung is logged to the trial's tracked run and reported to Tune with the loop's folder (the last trainer
checkpoint and the best model) as its checkpoint. On a restart the trial continues from Tune's latest
checkpoint and reopens the same tracked run (its id travels inside the checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import traceback
from collections.abc import Collection
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.config import MAY_CHANGE
from diffusion_core.evaluate import Evaluator
from diffusion_core.loop import BEST, Rung, RungLoop, samples_file
from diffusion_core.trainer import DivergenceError, Trainer
from sweep.artifacts import CHECKPOINTS, SAMPLES_KEY, SAMPLING_STUDY
from sweep.config import SweepConfig
from sweep.sampling_study import describe, run_sampling_study
from sweep.staging import fetch_for_trial
from sweep.tracking import STATUS_TAG, QueuedRun, TrackedRun, open_tracker

log = logging.getLogger(__name__)
TRIAL_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # an absent server: queue, don't wait


def staging_folder(experiment_path: str) -> Path:
    """Where the trial's loop writes its checkpoints before Tune persists them: inside the trial's own folder of
    a local storage path (same disk as the checkpoints), else the trial's working folder on this node."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    if "://" in experiment_path:
        return trial_dir / "rung_checkpoint"
    return Path(experiment_path) / trial_dir.name / "rung_checkpoint"


def restore(loop: RungLoop) -> None:
    """Continue from Tune's latest checkpoint; if it is corrupt, from the newest earlier one that loads."""
    restore_from(loop, tune.get_checkpoint())


def restore_from(loop: RungLoop, checkpoint: tune.Checkpoint | None, may_change: Collection[str] = MAY_CHANGE) -> None:
    """Continue from ``checkpoint`` (Tune's or Ray Train's latest) if its run config differs only in ``may_change``;
    if it is corrupt, from the newest earlier one that loads."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        try:
            loop.restore(folder, may_change)
            return
        except CheckpointError as exc:
            error = exc
    current = Path(checkpoint.path)
    older = sorted(current.parent.glob("checkpoint_*"), reverse=True) if type(checkpoint.filesystem).__name__ == "LocalFileSystem" else []
    for candidate in (p for p in older if p.name < current.name):
        try:
            loop.restore(candidate, may_change)
        except CheckpointError:
            continue
        log.warning("%s; continuing from the previous good checkpoint %s (step %d)", error, candidate, loop.trainer.step)
        return
    raise error


def log_rung(run: TrackedRun, rung: Rung, metrics: dict[str, float], folder: Path) -> None:
    """A rung in the tracker: its metrics, its best EMA's sample grid (key ``samples`` at the rung's step, for the
    UI's image comparison) and, when it improved, the new best model file."""
    run.log_metrics(metrics, rung.step)
    run.log_image((folder / samples_file(rung.step)).read_bytes(), SAMPLES_KEY, rung.step)
    if rung.improved:
        run.log_file(folder / BEST, CHECKPOINTS)


def final_rung_study(rung: Rung, sweep: SweepConfig, loop: RungLoop, run: TrackedRun) -> dict[str, Any]:
    """The sampling study on the final rung's best EMA network (``eval.search``): its metrics, logged to the run."""
    cfg = loop.trainer.cfg
    study = run_sampling_study(rung.model, loop.trainer.schedule, cfg, sweep.sampling_search, loop.evaluator.features, loop.trainer.device)
    log.info(describe(study, cfg))
    best = json.dumps(study.best_settings(cfg))
    run.log_table(study.table(), SAMPLING_STUDY)
    run.set_tags({"sampling_best": best})
    return {**study.metrics(), "sampling_best": best}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def trial_label(trial_name: str, trial_dir: str) -> str:
    """``trial N``, N being Ray's trial counter (its trial folder is ``<trial name>_<N>_<values>_<time>``), else the
    trial name."""
    folder = Path(trial_dir).name
    number = folder.removeprefix(f"{trial_name}_").split("_", 1)[0]
    return f"trial {number}" if folder.startswith(f"{trial_name}_") and number.isdigit() else trial_name


def trial_run_name(label: str, config: dict[str, Any], limit: int = 250) -> str:
    """What a trial's run is called: its label and sampled values, e.g. ``trial 3: lr=0.0012 schedule=cosine``
    (a dimension by the last part of its path, unless two dimensions share it)."""
    leaves = [path.rsplit(".", 1)[-1] for path in config]
    keys = [leaf if leaves.count(leaf) == 1 else path for path, leaf in zip(config, leaves, strict=True)]
    values = " ".join(f"{key}={_short(value)}" for key, value in zip(keys, config.values(), strict=True))
    return f"{label}: {values}"[:limit] if values else label


def trial_run(loop: RungLoop, config: dict[str, Any], tracking_uri: str, experiment_id: str, parent_run_id: str) -> QueuedRun:
    """The trial's tracked run behind a queue: opened (or reopened: its id travels in the checkpoint) when the
    tracker answers, while training goes on if it does not."""
    context = tune.get_context()
    weights = loop.evaluator.features.weights
    tags = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "worker_pid": str(os.getpid()),
            "num_parameters": str(loop.trainer.model.num_parameters()), "restored_at_step": str(loop.trainer.step),
            "inception_weights": str(weights.path), "inception_weights_sha256": weights.sha256}
    tracker = open_tracker(tracking_uri)
    name = trial_run_name(trial_label(context.get_trial_name(), context.get_trial_dir()), config)
    run = QueuedRun(lambda: tracker.trial_run(experiment_id, parent_run_id, context.get_trial_id(), name, config, tags,
                                              loop.extra.get("run_id")))
    run.flush()
    return run


def run_trial(config: dict[str, Any], *, sweep: SweepConfig, tracking_uri: str, experiment_id: str, parent_run_id: str,
              experiment_path: str) -> None:
    """Function trainable; ``config`` is the flat ``{key.path: value}`` dict sampled by Optuna."""
    os.environ.update(TRIAL_HTTP)
    cfg = sweep.run_config(config)
    torch.set_num_threads(max(1, min(int(sweep.sweep.resources_per_trial.cpu), os.cpu_count() or 1)))
    fetch_for_trial(cfg, experiment_path)
    trainer = Trainer(cfg)
    loop = RungLoop(trainer, Evaluator(cfg, trainer.device), staging_folder(experiment_path))
    restore(loop)
    run = trial_run(loop, config, tracking_uri, experiment_id, parent_run_id)

    def report(rung: Rung) -> None:
        metrics = rung.metrics()
        study = final_rung_study(rung, sweep, loop, run) if rung.final and sweep.sampling_search is not None else {}
        log_rung(run, rung, {**metrics, **{k: v for k, v in study.items() if k != "sampling_best"}}, loop.folder)
        loop.extra["run_id"] = run.run_id or loop.extra.get("run_id")
        tune.report({**metrics, **study, "step": rung.step, "run_id": run.run_id or "", "node_id": ray.get_runtime_context().get_node_id(),
                     "tracking_queued": len(run.pending)},
                    checkpoint=tune.Checkpoint.from_directory(loop.folder))

    try:
        loop.run(report)
    except DivergenceError as exc:
        run.finish("failed", f"diverged: {exc}")
        raise
    except Exception:
        run.set_tags({STATUS_TAG: "failed", "failure_reason": traceback.format_exc()[-5000:]})
        raise
    finally:
        if not run.flush():
            log.warning("%d tracking record(s) of trial %s not delivered; the driver replays them from the Ray results",
                        len(run.pending), tune.get_context().get_trial_id())
