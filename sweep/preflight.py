"""Checks run before Ray starts: storage, tracking server, dataset, FID weights, resources.
Each failure is one line naming the key and the fix."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from diffusion_core.data import load_images
from diffusion_core.inception_weights import InceptionWeights, resolve_inception_weights
from sweep.config import SweepConfig
from sweep.tracking import TrackingError, check_reachable, resolve_tracking_uri


class PreflightError(RuntimeError):
    """The sweep cannot start; the message says why and what to change."""


@dataclass
class Checked:
    tracking_uri: str
    storage_path: str
    experiment_path: str
    weights: InceptionWeights


def _is_remote(path: str) -> bool:
    return "://" in path


def check_storage(cfg: SweepConfig, resume: bool) -> tuple[str, str]:
    storage = cfg.sweep.storage_path
    if _is_remote(storage):
        return storage, f"{storage.rstrip('/')}/{cfg.name}"
    root = Path(storage).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise PreflightError(f"{cfg.source}: sweep.storage_path: cannot write to {root} ({exc.strerror}); choose a writable folder or pass --storage-path") from None
    experiment = root / cfg.name
    if experiment.exists() and not resume:
        raise PreflightError(f"{cfg.source}: name: a sweep named {cfg.name!r} already exists at {experiment}; pass --resume to continue it, or choose another name")
    if resume and not experiment.exists():
        raise PreflightError(f"{cfg.source}: name: --resume, but no sweep {cfg.name!r} exists at {experiment}")
    return str(root), str(experiment)


def check_tracking(cfg: SweepConfig) -> str:
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    try:
        check_reachable(uri, f"{cfg.source}: tracking.tracking_uri")
    except TrackingError as exc:
        raise PreflightError(str(exc)) from None
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not os.access(folder, os.W_OK):
            raise PreflightError(f"{cfg.source}: tracking.tracking_uri: cannot write the SQLite store in {folder}")
    return uri


def check_study(cfg: SweepConfig, resume: bool) -> None:
    """A new sweep starts a new Optuna study: one left in ``sweep.study_storage`` under the same name would feed
    the old sweep's trials to the searcher."""
    url = cfg.study_storage
    if resume or (url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists()):
        return
    try:
        names = optuna.study.get_all_study_names(url)
    except Exception as exc:  # optuna/SQLAlchemy raise many types for a bad URL or an unreachable database
        raise PreflightError(f"{cfg.source}: sweep.study_storage: cannot open {url} ({str(exc).splitlines()[0][:200]})") from None
    if cfg.name in names:
        raise PreflightError(f"{cfg.source}: name: an Optuna study {cfg.name!r} already exists in {url}; pass --resume to continue it, or choose another name")


def check_resources(cfg: SweepConfig, local: bool) -> None:
    wanted = cfg.sweep.resources_per_trial
    if not local:
        return
    cpus = os.cpu_count() or 1
    if wanted.cpu > cpus:
        raise PreflightError(f"{cfg.source}: sweep.resources_per_trial.cpu: {wanted.cpu} CPUs per trial, but this machine has {cpus}")
    if wanted.gpu > 0 and wanted.gpu > max(torch.cuda.device_count(), 0):
        have = torch.cuda.device_count()
        raise PreflightError(f"{cfg.source}: sweep.resources_per_trial.gpu: {wanted.gpu} GPUs per trial, but this machine has {have}; set gpu: 0 or pass --address of a GPU cluster")


def preflight(cfg: SweepConfig, address: str | None, resume: bool) -> Checked:
    check_resources(cfg, local=address is None)
    storage, experiment = check_storage(cfg, resume)
    check_study(cfg, resume)
    uri = check_tracking(cfg)
    base = cfg.run_config({})
    load_images(base.data, train=True)
    weights = resolve_inception_weights(base.eval.inception_weights)
    return Checked(uri, storage, experiment, weights)
