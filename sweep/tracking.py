"""MLflow bookkeeping through ``MlflowClient`` only (no global active run): one parent run per sweep,
one child run per trial linked by ``mlflow.parentRunId``, statuses set from what Ray decided."""
from __future__ import annotations

import io
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from diffusion_core.config import RunConfig
from diffusion_core.interpolate import load_model
from sweep.config import SweepConfig, parse_sweep

T = TypeVar("T")
SWEEP_TAG = "diffusion_sweep.name"
TRIAL_TAG = "diffusion_sweep.trial_id"
STATUS_TAG = "diffusion_sweep.status"
BEST_CHECKPOINT = "checkpoints/best_ema.pt"  # a trial run's best EMA weights, with its run config inside
RESOLVED_SPACE = "resolved_space.yaml"  # the parent run's sweep file as the driver resolved it


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so trial processes (which run in their own
    folders) write to the same store as the driver."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def retrying(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry a tracking call that lost a race for a SQLite write lock (or a flaky server)."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MlflowException wraps sqlite's "database is locked" and HTTP errors
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(0.2 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _transient(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("locked", "busy", "timeout", "timed out", "connection", "503", "502", "429"))


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    found = retrying(lambda: client.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return retrying(lambda: client.create_experiment(name, artifact_location=location))


def default_artifact_root(tracking_uri: str) -> Path | None:
    """Beside a SQLite store, an ``mlartifacts`` folder; servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts"
    return None


def load_resolved_sweep(client: MlflowClient, parent_run_id: str) -> SweepConfig:
    """The sweep of a parent run, from its ``resolved_space.yaml`` artifact."""
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(parent_run_id, RESOLVED_SPACE, folder)
        return parse_sweep(yaml.safe_load(Path(path).read_text()), RESOLVED_SPACE)


def load_best_model(client: MlflowClient, run_id: str, device: str = "cpu") -> tuple[nn.Module, RunConfig]:
    """A trial run's best EMA network and its run config, from its ``checkpoints/best_ema.pt`` artifact."""
    with tempfile.TemporaryDirectory() as folder:
        return load_model(client.download_artifacts(run_id, BEST_CHECKPOINT, folder), device)


class TrialRun:
    """The child run of one trial, written from the trial's process."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def find(cls, client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> TrialRun | None:
        """The child run already made for this trial (a trial restarted before its first checkpoint)."""
        runs = retrying(lambda: client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1))
        return cls(client, runs[0].info.run_id) if runs else None

    @classmethod
    def create(cls, client: MlflowClient, experiment_id: str, parent_run_id: str, name: str, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> TrialRun:
        run_tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": name, TRIAL_TAG: trial_id, STATUS_TAG: "running", **tags}
        run = retrying(lambda: client.create_run(experiment_id, tags=run_tags, run_name=name))
        trial = cls(client, run.info.run_id)
        trial.log_params(params)
        return trial

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        retrying(lambda: self.client.log_batch(self.run_id, params=entries))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        retrying(lambda: self.client.log_batch(self.run_id, metrics=entries))

    def set_tags(self, tags: dict[str, str]) -> None:
        retrying(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_png(self, png: bytes, artifact_file: str) -> None:
        from PIL import Image

        retrying(lambda: self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), artifact_file=artifact_file))

    def log_table(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        """A table (shown in the MLflow UI's artifact view and its evaluation tab) as ``artifact_file`` (.json)."""
        retrying(lambda: self.client.log_table(self.run_id, data=columns, artifact_file=artifact_file))

    def log_file(self, path: Path, artifact_path: str) -> None:
        retrying(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def reopen(self, tags: dict[str, str]) -> None:
        """Continue this run after a restart: status RUNNING again, with the given tags."""
        self.set_tags({STATUS_TAG: "running", **tags})
        retrying(lambda: self.client.update_run(self.run_id, status="RUNNING"))

    def finish(self, status: str, label: str, reason: str | None = None) -> None:
        """status: FINISHED / KILLED / FAILED; label: completed / pruned / failed (the status tag)."""
        tags = {STATUS_TAG: label, **({"failure_reason": reason[:5000]} if reason else {})}
        self.set_tags(tags)
        retrying(lambda: self.client.set_terminated(self.run_id, status=status))


class SweepTracker:
    """The parent run of a sweep, owned by the driver."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, default_artifact_root(self.tracking_uri))
        self.parent_run_id = ""

    def start_parent(self, sweep_name: str, resume: bool, tags: dict[str, str]) -> str:
        """Create the parent run, or reopen the latest one of this sweep on ``--resume``."""
        if resume:
            runs = retrying(lambda: self.client.search_runs(
                [self.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`mlflow.parentRunId` IS NULL",
                order_by=["attributes.start_time DESC"], max_results=1))
            if runs:
                self.parent_run_id = runs[0].info.run_id
                retrying(lambda: self.client.update_run(self.parent_run_id, status="RUNNING"))
                return self.parent_run_id
        run = retrying(lambda: self.client.create_run(self.experiment_id, tags={SWEEP_TAG: sweep_name, **tags}, run_name=sweep_name))
        self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def children(self) -> list[Any]:
        return retrying(lambda: self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'", max_results=10_000))

    def finish_parent(self, metrics: dict[str, float], params: dict[str, Any], tags: dict[str, str], status: str = "FINISHED") -> None:
        now = int(time.time() * 1000)
        retrying(lambda: self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        ))
        for key, value in params.items():
            self.client.set_tag(self.parent_run_id, f"best.{key}", str(value))
        retrying(lambda: self.client.set_terminated(self.parent_run_id, status=status))
