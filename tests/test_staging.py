"""Datasets staged once per cluster: one locked download per machine, one file per split, copied through the
sweep's storage to every node once, and read from there instead of from torchvision."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers import MNIST_ROOT, require

from diffusion_core import data
from diffusion_core.config import DataConfig, RunConfig
from sweep.staging import fetch_for_trial, stage_for_sweep


def test_concurrent_downloads_into_one_folder_run_one_at_a_time(tmp_path, monkeypatch):
    """Eight trials starting together on one node: their torchvision downloads never overlap, and the staged file
    is fetched once."""
    running, overlaps, calls = [], [], []

    def fake_download(cfg, train, root):
        running.append(1)
        overlaps.append(len(running))
        calls.append(train)
        time.sleep(0.05)
        running.pop()
        return np.zeros((4, 3, 32, 32), np.uint8), np.arange(4)

    monkeypatch.setattr(data, "_torchvision_unlocked", fake_download)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), download=True)
    threads = [threading.Thread(target=data._torchvision, args=(cfg, True)) for _ in range(4)]
    threads += [threading.Thread(target=data.stage, args=(cfg, True)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1, "two downloads ran at once"
    assert len(calls) == 4 + 1, "the staged split was fetched more than once"
    assert data.staged_file(cfg, True).is_file()


def test_a_split_staged_through_remote_storage_reaches_a_fresh_node(tmp_path):
    """The driver stages MNIST into the (here file://) storage; a node with an empty data.root and no download gets
    the same images from there."""
    require(MNIST_ROOT / "MNIST", "offline MNIST")
    driver_root = tmp_path / "driver"
    driver_root.mkdir()
    (driver_root / "MNIST").symlink_to(MNIST_ROOT / "MNIST")
    storage = (tmp_path / "bucket").as_uri()
    run = RunConfig.model_validate({"data": {"dataset": "mnist", "root": str(driver_root), "download": False},
                                    "eval": {"reference_split": "test"}})
    stage_for_sweep(run, storage)
    assert sorted(p.name for p in (tmp_path / "bucket" / ".datasets").iterdir()) == ["mnist-test.npz", "mnist-train.npz"]

    node = run.model_copy(update={"data": run.data.model_copy(update={"root": str(tmp_path / "node")})})
    fetch_for_trial(node, f"{storage}/my-sweep")
    fetch_for_trial(node, f"{storage}/my-sweep")  # a second trial on the node finds the copy
    staged = data.load_images(node.data, train=True)
    original = data.load_images(run.data.model_copy(update={"root": str(MNIST_ROOT)}), train=True)
    assert torch.equal(staged.images, original.images) and torch.equal(staged.labels, original.labels)


def test_local_storage_stages_nothing(tmp_path):
    run = RunConfig.model_validate({"data": {"dataset": "digits", "root": str(tmp_path)}})
    stage_for_sweep(run, str(tmp_path / "ray_results"))
    fetch_for_trial(run, str(tmp_path / "ray_results" / "sweep"))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_staged_dataset_fails_the_trial(tmp_path):
    run = RunConfig.model_validate({"data": {"dataset": "mnist", "root": str(tmp_path / "node"), "download": False}})
    with pytest.raises(FileNotFoundError):
        fetch_for_trial(run, f"{(tmp_path / 'bucket').as_uri()}/sweep")


def test_storage_the_driver_cannot_write_is_one_line(tmp_path, monkeypatch):
    from diffusion_core.data import DatasetError

    monkeypatch.setattr("sweep.staging.stage", lambda cfg, train: tmp_path / "x.npz")
    (tmp_path / "x.npz").write_bytes(b"x")
    (tmp_path / "blocked").write_text("a file where the storage folder should be")
    run = RunConfig.model_validate({"data": {"dataset": "mnist", "root": str(tmp_path)}})
    with pytest.raises(DatasetError, match=r"^data: cannot stage mnist into file://.*; check sweep.storage_path$"):
        stage_for_sweep(run, (tmp_path / "blocked").as_uri())
