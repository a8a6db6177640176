"""A torchvision dataset staged once per cluster. The driver fetches it (one download, under a lock) as one file
per split in its ``data.root`` and, when the sweep's storage is remote (s3://, gs://), copies those files to
``<storage>/.datasets/``; a trial copies them from there into its own node's ``data.root`` once per node (under a
node-local lock) before it loads the data. No worker downloads the dataset, and no two trials race on a tarball.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from pyarrow import fs as pafs

from diffusion_core.config import RunConfig
from diffusion_core.data import DatasetError, file_lock, load_images, stage, staged_file

FOLDER = ".datasets"  # a sweep name never starts with ".": no sweep folder can collide with it


def _splits(cfg: RunConfig) -> list[bool]:
    """The splits a trial reads: train, and the FID reference split."""
    return sorted({True, cfg.eval.reference_split == "train"})


def staging_uri(storage_path: str) -> str | None:
    """The shared folder of staged datasets in a remote storage path; None for a local one."""
    return f"{storage_path.rstrip('/')}/{FOLDER}" if "://" in storage_path else None


def stage_for_sweep(cfg: RunConfig, storage_path: str) -> None:
    """On the driver, before any trial: for remote storage, each split fetched once into ``data.root`` and copied
    next to the sweeps there (unless an equal copy is there already); for local storage (one machine) the
    dataset is only loaded, so that a missing one fails now."""
    remote = staging_uri(storage_path)
    if remote is None or cfg.data.dataset == "digits":  # digits: shipped with scikit-learn
        load_images(cfg.data, train=True)
        return
    files = [stage(cfg.data, train) for train in _splits(cfg)]
    try:
        filesystem, folder = pafs.FileSystem.from_uri(remote)
        filesystem.create_dir(folder, recursive=True)
        for path in files:
            target = f"{folder}/{path.name}"
            if filesystem.get_file_info(target).size != path.stat().st_size:
                pafs.copy_files(str(path), target, destination_filesystem=filesystem)
    except OSError as exc:
        message = " ".join(str(exc).split())[:300]
        raise DatasetError(f"data: cannot stage {cfg.data.dataset} into {remote} ({message}); check sweep.storage_path") from None


def fetch_for_trial(cfg: RunConfig, experiment_path: str) -> None:
    """In a trial of the sweep at ``experiment_path`` (``<storage>/<name>``): the staged splits copied from remote
    storage into this node's ``data.root``, once per node."""
    remote = staging_uri(experiment_path.rstrip("/").rsplit("/", 1)[0])
    if remote is None or cfg.data.dataset == "digits":
        return
    filesystem, folder = pafs.FileSystem.from_uri(remote)
    for train in _splits(cfg):
        path = staged_file(cfg.data, train)
        with file_lock(path.with_name(f".{path.name}.lock")):
            if path.is_file():
                continue
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
                pafs.copy_files(f"{folder}/{path.name}", str(Path(tmp) / path.name), source_filesystem=filesystem)
                (Path(tmp) / path.name).replace(path)
