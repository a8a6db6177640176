"""Checks run before any trial starts: on a cluster its versions and what every node reaches (``sweep.cluster``),
then storage, tracking server, dataset (staged for the cluster), FID weights, resources.
Each failure is one line naming the key and the fix."""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from ray import tune
from ray._common.utils import get_default_ray_temp_dir

from diffusion_core.config import expand_path
from diffusion_core.inception_weights import InceptionWeights, resolve_inception_weights
from sweep.cluster import ClusterError, check_cluster
from sweep.config import SweepConfig
from sweep.staging import stage_for_sweep
from sweep.sweep_state import SWEEP_FILE, resume_changes, save_sweep_file
from sweep.tracking import TrackingError, check_reachable, resolve_tracking_uri


class PreflightError(RuntimeError):
    """The sweep cannot start; the message says why and what to change."""


@dataclass
class Checked:
    tracking_uri: str
    storage_path: str
    experiment_path: str
    weights: InceptionWeights
    resume_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _is_remote(path: str) -> bool:
    return "://" in path


def storage_location(cfg: SweepConfig) -> tuple[str, str]:
    """(storage root, experiment path) of the sweep; a local root must be writable."""
    storage = cfg.sweep.storage_path
    if _is_remote(storage):
        return storage, f"{storage.rstrip('/')}/{cfg.name}"
    root = expand_path(storage).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise PreflightError(f"{cfg.source}: sweep.storage_path: cannot write to {root} ({exc.strerror}); choose a writable folder or pass --storage-path") from None
    return str(root), str(root / cfg.name)


def check_experiment(cfg: SweepConfig, experiment: str, resume: bool) -> dict[str, tuple[Any, Any]]:
    """A new sweep must not exist yet; a resumed one must, with the same file except for ``SAFE_ON_RESUME`` keys
    (returned, to be recorded). Run under the sweep's lock, so that two launches cannot both pass."""
    leftovers = [] if _is_remote(experiment) or not Path(experiment).is_dir() else [p for p in Path(experiment).iterdir() if p.name != SWEEP_FILE]
    exists = tune.Tuner.can_restore(experiment) or bool(leftovers)
    if exists and not resume:
        raise PreflightError(f"{cfg.source}: name: a sweep named {cfg.name!r} already exists at {experiment}; pass --resume to continue it, or choose another name")
    if resume and not exists:
        raise PreflightError(f"{cfg.source}: name: --resume, but no sweep {cfg.name!r} exists at {experiment}")
    if resume:
        return resume_changes(experiment, cfg.resolved(), cfg.source)
    save_sweep_file(experiment, cfg.resolved())
    return {}


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


def check_address(address: str | None) -> None:
    """A cluster to join must answer within seconds (``ray.init`` itself retries an unreachable one for minutes)."""
    if address is None:
        return
    target = address
    if address == "auto":
        recorded = Path(get_default_ray_temp_dir()) / "ray_current_cluster"
        if not recorded.is_file():
            raise PreflightError("--address auto: no running Ray cluster is recorded on this machine; start one with "
                                 "`ray start --head`, give HOST:PORT, or leave --address out to run locally")
        target = recorded.read_text().strip()
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise PreflightError(f"--address {address}: no Ray cluster answers at {target} ({getattr(exc, 'strerror', None) or exc}); "
                             "start it or open the tunnel, or leave --address out to run locally") from None


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


def cluster_settings(cfg: SweepConfig, address: str | None) -> None:
    """On a cluster (``address``): it answers, runs this machine's versions, lends its storage and tracking settings
    where the sweep names none (printed), and every node reaches them. Runs before the storage path is used."""
    check_address(address)
    if address is None:
        return
    try:
        for setting in check_cluster(cfg, address, resolve_tracking_uri):
            print(f"from the cluster's settings: {setting}", flush=True)
    except ClusterError as exc:
        raise PreflightError(str(exc)) from None


def preflight(cfg: SweepConfig, address: str | None, resume: bool, storage: str, experiment: str) -> Checked:
    """Everything checked before Ray starts (under the sweep's lock): resources, the experiment folder and, on
    ``--resume``, the file's changes, the tracking store, the dataset (staged for a cluster) and the FID weights."""
    check_resources(cfg, local=address is None)
    changes = check_experiment(cfg, experiment, resume)
    check_study(cfg, resume)
    uri = check_tracking(cfg)
    base = cfg.run_config({})
    stage_for_sweep(base, storage)
    weights = resolve_inception_weights(base.eval.inception_weights)
    return Checked(uri, storage, experiment, weights, changes)
