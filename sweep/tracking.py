"""The tracker seam: what a sweep and its trials record (parameters, a metric at a step, an image at a step,
files, tags, status) and what the report reads back, as the ``Tracker`` protocol, with its MLflow
implementation. This is the one module of the product that imports mlflow: another tracker is another class
here and another line in ``open_tracker``.

Layout: one experiment per sweep, a parent run per sweep (tag ``diffusion_sweep.name``) and one child run per
trial, linked by ``mlflow.parentRunId`` and written through ``MlflowClient`` only (never the process-global
active run). Outcomes map to run statuses: completed → FINISHED, pruned → KILLED, failed → FAILED.

Models: a model file logged into a run as an MLflow pyfunc model (``ImageModel``: ``predict`` draws images),
registered as a version of a registered model with tags and optionally an alias, and found again from
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
"""
from __future__ import annotations

import io
import logging
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient

# MLflow's module-level API (model logging, the registry's logged-model lookup) reads the process-global tracking
# URI; MLflow's own helper sets it for a block and restores "unset" after it, where set_tracking_uri(get_tracking_uri())
# would pin the default and hide a later $MLFLOW_TRACKING_URI.
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from sweep.uris import redact

T = TypeVar("T")
log = logging.getLogger(__name__)
SWEEP_TAG = "diffusion_sweep.name"
TRIAL_TAG = "diffusion_sweep.trial_id"
STATUS_TAG = "diffusion_sweep.status"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG, FINAL_ROLE = "role", "final"  # the sweep's winner trained to the full budget, a child run but no trial
RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED", "running": "RUNNING"}
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a SQLite store by default
MODEL_ARTIFACT = "model"  # a logged model's name in its run, and the key of its model file among its artifacts
IMAGE_NAME = re.compile(r"images/(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or does not hold what was asked for; one line."""


@dataclass(frozen=True)
class RunRecord:
    """One run as the tracker holds it (read side)."""

    run_id: str
    experiment_id: str
    name: str
    status: str  # RUNNING / FINISHED / KILLED / FAILED
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # latest value of each metric


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp: int  # ms


class Drawer(Protocol):
    """What a model file is loaded as for ``ImageModel.predict``."""

    def draw(self, num_samples: int, seed: int, batch_size: int | None = None) -> np.ndarray: ...


class ImageModel(mlflow.pyfunc.PythonModel):
    """A model file as an MLflow pyfunc model: ``predict({"num_samples": N, "seed": S})`` returns N images, a uint8
    (N, H, W, 3) array, the same ones for the same seed (one row per request; ``params={"batch_size": B}``).
    ``load`` turns the model file (the artifact ``model``) into a ``Drawer``."""

    def __init__(self, load: Callable[[str], Drawer]) -> None:
        self.load = load

    def load_context(self, context: Any) -> None:
        self.drawer = self.load(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        rows = model_input.to_dict("records")
        batch_size = int((params or {}).get("batch_size") or 0) or None
        return np.concatenate([self.drawer.draw(int(r["num_samples"]), int(r["seed"]), batch_size) for r in rows])


def serve_images(load: Callable[[str], Drawer]) -> None:
    """Declare, from a model-code file (``sweep/pyfunc_model.py``), the pyfunc model MLflow builds when loading."""
    mlflow.models.set_model(ImageModel(load))


def image_signature(shape: tuple[int, int, int]) -> ModelSignature:
    """Input rows (num_samples, seed), output uint8 images of ``shape`` (H, W, 3), parameter batch_size (0: the model's)."""
    inputs = Schema([ColSpec("long", "num_samples"), ColSpec("long", "seed")])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape))])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("batch_size", "long", 0)]))


class TrackedRun(Protocol):
    """The write side of one run."""

    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, png: bytes, key: str, step: int) -> None: ...
    def log_file(self, path: Path, folder: str) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def log_table(self, columns: dict[str, list[Any]], name: str) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def reopen(self, tags: dict[str, Any]) -> None: ...
    def finish(self, outcome: str, reason: str | None = None) -> None: ...


class Tracker(Protocol):
    """A tracking store: sweeps and trials are written and read through it."""

    uri: str

    def experiment(self, name: str) -> str: ...
    def start_sweep(self, experiment_id: str, name: str, resume: bool, tags: dict[str, str]) -> TrackedRun: ...
    def trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str, name: str, params: dict[str, Any],
                  tags: dict[str, str], run_id: str | None = None) -> TrackedRun: ...
    def run(self, run_id: str) -> TrackedRun: ...
    def find_sweep(self, experiment: str, name: str) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def children(self, parent: RunRecord) -> list[RunRecord]: ...
    def history(self, run_id: str, key: str) -> list[MetricPoint]: ...
    def image_steps(self, run_id: str, key: str) -> set[int]: ...
    def images(self, run_id: str, key: str) -> dict[int, bytes]: ...
    def has_artifact(self, run_id: str, path: str) -> bool: ...
    def read_text(self, run_id: str, name: str) -> str: ...
    def download(self, run_id: str, path: str, folder: Path) -> Path: ...
    def find_trial(self, key: str) -> RunRecord: ...
    def runs_page(self, experiment_id: str) -> str: ...
    def log_model(self, run_id: str, model_file: Path, code: Path, shape: tuple[int, int, int],
                  requirements: list[str], metadata: dict[str, Any]) -> str: ...
    def register_model(self, name: str, model_uri: str, run_id: str, tags: dict[str, Any], alias: str | None = None) -> str: ...
    def model_file(self, uri: str, folder: Path) -> Path: ...


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so trial processes (which run in their own
    folders) write to the same store as the driver."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
    return uri


def check_reachable(uri: str, source: str = "tracking.tracking_uri") -> None:
    """Fail fast on a missing SQLite file's folder or an unreachable server (a client would retry for minutes)."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"{source}: MLflow server {redact(uri)} is unreachable ({getattr(exc, 'reason', exc)}); start it or fix the URI") from None


def runs_page(uri: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs in the model-training view (MLflow 3 opens on its GenAI traces page,
    where a sweep looks empty), on the server ``uri`` or on `mlflow ui`'s default address for a SQLite store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def retrying(call: Callable[[], T], attempts: int = 8) -> T:
    """Retry a tracking call that lost a race for a SQLite write lock or met an overloaded server. An unreachable
    server is not retried here: its caller decides (a trial queues its records, the driver warns)."""
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
    return any(s in text for s in ("locked", "busy", "503", "502", "429"))


def _default_artifact_root(uri: str) -> Path | None:
    """Beside a SQLite store, an ``mlartifacts`` folder; servers choose their own."""
    return Path(uri[len("sqlite:///"):]).parent / "mlartifacts" if uri.startswith("sqlite:///") else None


def _record(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(run.info.run_id, run.info.experiment_id, tags.get("mlflow.runName", run.info.run_id[:8]),
                     run.info.status, run.info.start_time or 0, tags, dict(run.data.params), dict(run.data.metrics))


class MlflowRun:
    """One MLflow run, written through the tracking client."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        retrying(lambda: self.client.log_batch(self.run_id, params=entries))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        retrying(lambda: self.client.log_batch(self.run_id, metrics=entries))

    def log_image(self, png: bytes, key: str, step: int) -> None:
        """An image under ``key`` at ``step``: MLflow's UI compares these across runs and steps."""
        retrying(lambda: self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), key=key, step=step))

    def log_file(self, path: Path, folder: str) -> None:
        retrying(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def log_text(self, text: str, name: str) -> None:
        retrying(lambda: self.client.log_text(self.run_id, text, name))

    def log_table(self, columns: dict[str, list[Any]], name: str) -> None:
        """A table (the UI's artifact view and evaluation tab) as ``name`` (.json)."""
        retrying(lambda: self.client.log_table(self.run_id, data=columns, artifact_file=name))

    def set_tags(self, tags: dict[str, Any]) -> None:
        retrying(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def reopen(self, tags: dict[str, Any]) -> None:
        """Continue this run after a restart: status RUNNING again, with the given tags."""
        self.set_tags({STATUS_TAG: "running", **tags})
        retrying(lambda: self.client.update_run(self.run_id, status="RUNNING"))

    def finish(self, outcome: str, reason: str | None = None) -> None:
        """End the run as ``outcome`` (completed / pruned / failed), with the reason when there is one."""
        self.set_tags({STATUS_TAG: outcome, **({"failure_reason": reason[:5000]} if reason else {})})
        retrying(lambda: self.client.set_terminated(self.run_id, status=RUN_STATUS[outcome]))


class MlflowTracker:
    """An MLflow tracking store (a SQLite file or a server)."""

    def __init__(self, uri: str) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.client = MlflowClient(self.uri)

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (artifacts beside a SQLite store) when missing."""
        found = retrying(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            return found.experiment_id
        root = _default_artifact_root(self.uri)
        return retrying(lambda: self.client.create_experiment(name, artifact_location=root.resolve().as_uri() if root else None))

    def start_sweep(self, experiment_id: str, name: str, resume: bool, tags: dict[str, str]) -> MlflowRun:
        """The sweep's parent run: a new one, or on ``resume`` the latest one of this sweep, RUNNING again."""
        if resume:
            runs = self._search([experiment_id], f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{PARENT_TAG}` IS NULL", 1)
            if runs:
                run = MlflowRun(self.client, runs[0].run_id)
                retrying(lambda: self.client.update_run(run.run_id, status="RUNNING"))
                return run
        created = retrying(lambda: self.client.create_run(experiment_id, tags={SWEEP_TAG: name, **tags}, run_name=name))
        return MlflowRun(self.client, created.info.run_id)

    def trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str, name: str, params: dict[str, Any],
                  tags: dict[str, str], run_id: str | None = None) -> MlflowRun:
        """The trial's child run: ``run_id`` (from its checkpoint) or the one already made for ``trial_id``
        reopened, else a new one with ``params``."""
        if run_id is None:
            found = self._search([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'", 1)
            run_id = found[0].run_id if found else None
        if run_id is not None:
            run = MlflowRun(self.client, run_id)
            run.reopen(tags)
            return run
        run_tags = {PARENT_TAG: parent_run_id, "mlflow.runName": name, TRIAL_TAG: trial_id, STATUS_TAG: "running", **tags}
        created = retrying(lambda: self.client.create_run(experiment_id, tags=run_tags, run_name=name))
        run = MlflowRun(self.client, created.info.run_id)
        run.log_params(params)
        return run

    def run(self, run_id: str) -> MlflowRun:
        return MlflowRun(self.client, run_id)

    def _search(self, experiment_ids: list[str], query: str, max_results: int = 10_000) -> list[RunRecord]:
        runs = retrying(lambda: self.client.search_runs(experiment_ids, query, order_by=["attributes.start_time DESC"],
                                                        max_results=max_results))
        return [_record(r) for r in runs]

    def find_sweep(self, experiment: str, name: str) -> RunRecord:
        """The latest parent run of sweep ``name`` in ``experiment``."""
        exp = retrying(lambda: self.client.get_experiment_by_name(experiment))
        if exp is None:
            raise TrackingError(f"no sweep {name!r}: no MLflow experiment {experiment!r} in {redact(self.uri)} (pass --experiment or --tracking-uri)")
        runs = self._search([exp.experiment_id], f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{PARENT_TAG}` IS NULL", 1)
        if not runs:
            raise TrackingError(f"no sweep {name!r} in experiment {experiment!r} of {redact(self.uri)}")
        return runs[0]

    def get_run(self, run_id: str) -> RunRecord:
        try:
            return _record(retrying(lambda: self.client.get_run(run_id)))
        except MlflowException:
            raise TrackingError(f"{run_id}: no such run in {redact(self.uri)}") from None

    def children(self, parent: RunRecord) -> list[RunRecord]:
        """The trial runs of a sweep, oldest first (not its final run: that one is no trial of the search)."""
        runs = self._search([parent.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.run_id}'")
        return sorted((r for r in runs if r.tags.get(ROLE_TAG) != FINAL_ROLE), key=lambda r: r.start_time)

    def history(self, run_id: str, key: str) -> list[MetricPoint]:
        points = retrying(lambda: self.client.get_metric_history(run_id, key))
        return [MetricPoint(int(m.step), float(m.value), int(m.timestamp)) for m in points]

    def _image_paths(self, run_id: str, key: str) -> dict[int, str]:
        found: dict[int, str] = {}
        for artifact in sorted(retrying(lambda: self.client.list_artifacts(run_id, "images")), key=lambda a: a.path):
            match = IMAGE_NAME.match(artifact.path)
            if match and match["key"] == key.replace("/", "~"):
                found[int(match["step"])] = artifact.path  # same step twice: the later timestamp sorts last
        return found

    def image_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which the run logged an image under ``key``."""
        return set(self._image_paths(run_id, key))

    def images(self, run_id: str, key: str) -> dict[int, bytes]:
        """The run's images logged under ``key``, by step (the latest one when a step was logged twice)."""
        with tempfile.TemporaryDirectory() as folder:
            return {step: self.download(run_id, path, Path(folder)).read_bytes() for step, path in sorted(self._image_paths(run_id, key).items())}

    def has_artifact(self, run_id: str, path: str) -> bool:
        folder = path.rsplit("/", 1)[0] if "/" in path else None
        return any(a.path == path for a in retrying(lambda: self.client.list_artifacts(run_id, folder)))

    def read_text(self, run_id: str, name: str) -> str:
        with tempfile.TemporaryDirectory() as folder:
            return self.download(run_id, name, Path(folder)).read_text()

    def download(self, run_id: str, path: str, folder: Path) -> Path:
        try:
            return Path(retrying(lambda: self.client.download_artifacts(run_id, path, str(folder))))
        except (MlflowException, OSError):
            raise TrackingError(f"run {run_id}: no artifact {path!r} in {redact(self.uri)}") from None

    def find_trial(self, key: str) -> RunRecord:
        """A trial's run from its run id or its Ray Tune trial id."""
        try:
            return self.get_run(key)
        except TrackingError:
            pass
        experiments = [e.experiment_id for e in retrying(lambda: self.client.search_experiments())]
        runs = self._search(experiments, f"tags.`{TRIAL_TAG}` = '{key}'", 1) if experiments else []
        if not runs:
            raise TrackingError(f"{key}: no MLflow run or trial with this id in {redact(self.uri)} (pass --tracking-uri?)")
        return runs[0]

    def runs_page(self, experiment_id: str) -> str:
        return runs_page(self.uri, experiment_id)

    def log_model(self, run_id: str, model_file: Path, code: Path, shape: tuple[int, int, int],
                  requirements: list[str], metadata: dict[str, Any]) -> str:
        """Log ``model_file`` into run ``run_id`` as an MLflow model built by the model-code file ``code`` (which
        calls ``serve_images``); returns its ``models:/`` URI."""
        with _use_tracking_uri(self.uri):
            info = Model.log(artifact_path=None, name=MODEL_ARTIFACT, flavor=mlflow.pyfunc, run_id=run_id, python_model=str(code),
                             artifacts={MODEL_ARTIFACT: str(model_file)}, signature=image_signature(shape),
                             input_example={"num_samples": 1, "seed": 0},
                             pip_requirements=requirements, metadata=metadata)
        return info.model_uri

    def register_model(self, name: str, model_uri: str, run_id: str, tags: dict[str, Any], alias: str | None = None) -> str:
        """A new version of registered model ``name`` (created when missing) from a logged model, with ``tags``; the
        ``alias`` moves to it. Returns the version."""
        try:
            retrying(lambda: self.client.create_registered_model(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        model_id = model_uri.removeprefix("models:/")
        with _use_tracking_uri(self.uri):  # the registry store looks the logged model up through the global URI
            version = retrying(lambda: self.client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                                                        tags={k: str(v) for k, v in tags.items()})).version
        if alias:
            retrying(lambda: self.client.set_registered_model_alias(name, alias, version))
        return str(version)

    def model_file(self, uri: str, folder: Path) -> Path:
        """The model file of a registered version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) or a logged
        model (``models:/ID``), downloaded into ``folder``."""
        try:
            with _use_tracking_uri(self.uri):
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
            return local / Model.load(local).flavors["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
        except (MlflowException, OSError, KeyError) as exc:
            raise TrackingError(f"{uri}: no such model in {self.uri} ({str(exc).splitlines()[0][:200]})") from None


class QueuedRun:
    """A trial's run written through a bounded queue: while the tracker is away its records wait, in order, and
    training goes on; each write, and ``flush``, delivers what waits once the tracker answers again. The run itself
    is opened (created or found) on the first delivery. What is still queued when the trial ends is replayed from
    the trial's Ray results by the driver (``sweep.replay``)."""

    def __init__(self, open_run: Callable[[], TrackedRun], limit: int = 10_000) -> None:
        self._open_run, self._run, self.limit = open_run, None, limit
        self.pending: list[tuple[str, tuple[Any, ...]]] = []
        self.dropped = 0

    @property
    def run_id(self) -> str | None:
        return self._run.run_id if self._run is not None else None

    def flush(self) -> bool:
        """Deliver what waits; False while the tracker does not answer (the records stay queued)."""
        try:
            if self._run is None:
                self._run = self._open_run()
            while self.pending:
                name, args = self.pending[0]
                getattr(self._run, name)(*args)
                self.pending.pop(0)
        except Exception as exc:  # an unreachable server raises whatever its HTTP client raises
            log.warning("tracking store unreachable, %d record(s) queued: %s", len(self.pending), str(exc).splitlines()[0][:200])
            return False
        return True

    def _queue(self, name: str, *args: Any) -> None:
        if len(self.pending) >= self.limit:
            self.pending.pop(next((i for i, (n, _) in enumerate(self.pending) if n == "log_metrics"), 0))
            self.dropped += 1  # still in the Ray results: the replay delivers it
        self.pending.append((name, args))
        self.flush()

    def log_params(self, params: dict[str, Any]) -> None:
        self._queue("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue("log_metrics", metrics, step)

    def log_image(self, png: bytes, key: str, step: int) -> None:
        self._queue("log_image", png, key, step)

    def log_file(self, path: Path, folder: str) -> None:
        self._queue("log_file", path, folder)

    def log_text(self, text: str, name: str) -> None:
        self._queue("log_text", text, name)

    def log_table(self, columns: dict[str, list[Any]], name: str) -> None:
        self._queue("log_table", columns, name)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._queue("set_tags", tags)

    def reopen(self, tags: dict[str, Any]) -> None:
        self._queue("reopen", tags)

    def finish(self, outcome: str, reason: str | None = None) -> None:
        self._queue("finish", outcome, reason)


def open_tracker(uri: str) -> Tracker:
    """The tracker for ``uri`` (MLflow: a ``sqlite:///`` file or an ``http(s)://`` server)."""
    return MlflowTracker(uri)


def open_existing_tracker(uri: str, source: str = "--tracking-uri") -> Tracker:
    """The tracker of a store that must exist already (commands that read a sweep): one line when it does not."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise TrackingError(f"{source}: no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI")
    check_reachable(uri, source)
    return open_tracker(uri)
