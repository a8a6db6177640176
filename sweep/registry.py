"""A sweep's models in MLflow's Model Registry, and the way back from what a user names (a registry URI such as
``models:/NAME@champion``, a run id, a file) to a local model file.

Registering logs a model file, with the sampling settings it is meant to be used with written into its run
config, into its run as an MLflow pyfunc model (from code: ``sweep/pyfunc_model.py``, whose ``predict`` draws
images through ``sweep.generate``), and makes it a version of the registered model named after the sweep, tagged
with its FID/KID and its sweep. The newest
finalized version carries the alias ``champion``: ``mlflow.pyfunc.load_model("models:/NAME@champion")`` loads the
latest winner with nothing but this project and MLflow installed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from diffusion_core.checkpoint import CheckpointError, load_checkpoint, model_weights, run_config_of, save_model
from diffusion_core.config import RunConfig
from sweep.artifacts import BEST_MODEL
from sweep.tracking import Tracker, open_existing_tracker

CHAMPION = "champion"  # the alias of a sweep's newest finalized model version
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # what MLflow runs to build the model when loading it
SAMPLING_TAG = "sampling_best"  # a trial run's best sampling settings ({"eval.<key>": value}, JSON)


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def with_sampling(source: Path, settings: dict[str, Any] | None, target: Path) -> Path:
    """A model file whose run config holds ``settings`` (``{"eval.<key>": value}``, e.g. a trial's sampling-study
    best) as its sampling settings, written to ``target``; ``source`` itself when there are none."""
    if not settings:
        return source
    state = load_checkpoint(source)
    cfg = run_config_of(state, source)
    weights, info = model_weights(state)
    evaluation = {**cfg.eval.model_dump(), **{key.removeprefix("eval."): value for key, value in settings.items()}}
    updated = RunConfig.model_validate({**cfg.model_dump(), "eval": evaluation})
    return save_model(target, weights, updated, {**info, "sampling": settings})


def requirements() -> list[str]:
    """What loading the model needs: this project (at the version that logged it), torch and MLflow."""
    try:
        project = f"diffusion-sweep=={version('diffusion-sweep')}"
    except PackageNotFoundError:
        project = "diffusion-sweep"
    return [project, "torch", "torchvision", "mlflow"]


def register(tracker: Tracker, run_id: str, model_file: Path, name: str, tags: dict[str, Any], alias: str | None = None) -> Registered:
    """Log ``model_file`` into run ``run_id`` as an MLflow model and register it as a new version of ``name`` with
    ``tags`` plus the FID/KID it scored (and the N it was measured on); ``alias`` moves to the new version."""
    state = load_checkpoint(model_file, ("model",))
    cfg, info = run_config_of(state, model_file), dict(state.get("info", {}))
    scores = {"fid": info.get("fid"), "kid": info.get("kid"), "fid_num_samples": cfg.eval.num_samples,
              "step": info.get("step"), "ema_rate": info.get("ema_rate")}
    scores = {key: value for key, value in scores.items() if value is not None}
    size = cfg.data.resolution
    metadata = {**scores, "sampling": cfg.eval.settings().model_dump(), **tags}
    uri = tracker.log_model(run_id, model_file, MODEL_CODE, (size, size, 3), requirements(), metadata)
    return Registered(name, tracker.register_model(name, uri, run_id, {**tags, **scores}, alias), alias)


def resolve_model(model: str, tracking_uri: str, folder: Path) -> Path:
    """The local model file that ``model`` names: a checkpoint file; a registered model (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``); or a run id, whose best model file gets the run's best sampling settings."""
    if Path(model).is_file():
        return Path(model)
    if not model.startswith("models:/") and ("/" in model or model.endswith(".pt")):
        raise CheckpointError(f"{model}: checkpoint file not found")
    tracker = open_existing_tracker(tracking_uri)
    if model.startswith("models:/"):
        return tracker.model_file(model, folder)
    run = tracker.get_run(model)
    settings = json.loads(run.tags[SAMPLING_TAG]) if SAMPLING_TAG in run.tags else None
    return with_sampling(tracker.download(run.run_id, BEST_MODEL, folder), settings, folder / "model_with_sampling.pt")
