"""Datasets as in-memory uint8 image tensors, and a seeded, restartable batch order.

Images are kept as uint8 (N, C, H, W) so that even CIFAR-10 fits on a GPU; batches are converted
to float in [−1, 1] on the fly. The batch at training step k is a pure function of (seed, k), so a
restored run continues with exactly the batches it would have seen.

A torchvision dataset is downloaded under a file lock in ``data.root``, so processes that start together
fetch it once. ``stage`` keeps one split as a single ``<dataset>-<split>.npz`` in that folder, which
``load_images`` prefers: a sweep stages it once and copies that file to every node (``sweep.staging``).
"""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_core.checkpoint import write_atomic
from diffusion_core.config import DataConfig


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded; the message names the path and the fix."""


@dataclass
class ImageData:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device))


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] → float [−1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: Tensor) -> Tensor:
    """float [−1, 1] → uint8 [0, 255]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created if missing) for the duration of the block. In a folder this
    process cannot write, nothing will be written either: no lock is needed there."""
    with ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(path, "a"))
        except OSError:
            handle = None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def staged_file(cfg: DataConfig, train: bool) -> Path:
    """Where ``stage`` keeps one split of ``cfg.dataset`` as a single file."""
    return Path(cfg.root).expanduser() / f"{cfg.dataset}-{'train' if train else 'test'}.npz"


def _read_staged(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["images"], z["labels"]


def stage(cfg: DataConfig, train: bool) -> Path:
    """One split of a torchvision dataset as ``staged_file`` (downloaded first if needed), written once."""
    path = staged_file(cfg, train)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if not path.is_file():
            images, labels = _torchvision(cfg, train)
            write_atomic(path, lambda f: np.savez(f, images=images, labels=np.asarray(labels, dtype=np.int64)))
    return path


def _torchvision(cfg: DataConfig, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The split from torchvision; with ``download``, under a lock in ``root``, so that concurrent processes
    fetch it once (without, torchvision only reads)."""
    root = Path(cfg.root).expanduser()
    if not cfg.download:
        return _torchvision_unlocked(cfg, train, root)
    with file_lock(root / f".{cfg.dataset}.lock"):
        return _torchvision_unlocked(cfg, train, root)


def _torchvision_unlocked(cfg: DataConfig, train: bool, root: Path) -> tuple[np.ndarray, np.ndarray]:
    import torchvision

    try:
        if cfg.dataset == "mnist":
            ds = torchvision.datasets.MNIST(root, train=train, download=cfg.download)
            return ds.data.numpy()[:, None], ds.targets.numpy()
        if cfg.dataset == "cifar10":
            ds = torchvision.datasets.CIFAR10(root, train=train, download=cfg.download)
            return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)
        ds = torchvision.datasets.STL10(root, split="train" if train else "test", download=cfg.download)
        return ds.data, ds.labels
    except (RuntimeError, OSError) as exc:
        hint = "set data.download: true (needs internet)" if not cfg.download else "check the network or place the files there by hand"
        raise DatasetError(f"dataset {cfg.dataset!r} not found under {root} ({exc}); {hint}") from None


def _digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package); a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    keep = order[:cut] if train else order[cut:]
    return images[keep], digits.target[keep]


def load_images(cfg: DataConfig, train: bool = True) -> ImageData:
    """The dataset as uint8 tensors, resized to ``cfg.resolution`` and cut to ``cfg.subset``."""
    if cfg.dataset == "digits":
        images, labels = _digits(train)
    elif staged_file(cfg, train).is_file():
        images, labels = _read_staged(staged_file(cfg, train))
    else:
        images, labels = _torchvision(cfg, train)
    images_t = torch.from_numpy(np.ascontiguousarray(images))
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if cfg.subset is not None and cfg.subset < len(images_t):
        keep = torch.randperm(len(images_t), generator=torch.Generator().manual_seed(0))[: cfg.subset]
        images_t, labels_t = images_t[keep], labels_t[keep]
    if images_t.shape[-1] != cfg.resolution:
        resized = F.interpolate(images_t.float(), size=cfg.resolution, mode="bilinear", antialias=True, align_corners=False)
        images_t = resized.round().clamp(0, 255).to(torch.uint8)
    return ImageData(images_t, labels_t)


class BatchOrder:
    """Epoch-wise seeded permutations; the indices of step k depend only on (seed, k, batch size)."""

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=gen)
        return self._perm

    def indices(self, step: int) -> Tensor:
        start = step * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        epochs, offsets = positions // self.num_items, positions % self.num_items
        return torch.cat([self._permutation(int(e))[offsets[epochs == e]] for e in epochs.unique()])
