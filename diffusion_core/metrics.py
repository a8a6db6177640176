"""FID / KID on pytorch-fid's InceptionV3 pool3 features, with a shared on-disk reference-statistics cache.

FID compares Gaussians fitted to the features; it is biased in the sample count N, so compare FIDs only
at equal N. KID (unbiased polynomial-kernel MMD^2) is logged beside it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from pytorch_fid import inception as pfi
from rich.progress import Progress
from scipy import linalg
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from diffusion_core.checkpoint import write_atomic
from diffusion_core.inception_weights import InceptionWeights, fid_inception_skeleton, resolve_inception_weights

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
_BUILD_LOCK = threading.Lock()


def build_pytorch_fid_inception(weights_path: str | Path) -> pfi.InceptionV3:
    """pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)``,
    with its weights read from ``weights_path`` instead of downloaded (``fid_inception_v3`` is swapped for a
    skeleton loaded with ``load_state_dict(strict=True)``; everything else is pytorch-fid's own code)."""
    net = fid_inception_skeleton()
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    with _BUILD_LOCK, mock.patch.object(pfi, "fid_inception_v3", lambda: net):
        model = pfi.InceptionV3(
            [pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
            resize_input=True,
            normalize_input=True,
            use_fid_inception=True,
        )
    return model.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every eval-mode ``bn`` into the ``conv`` before it (pytorch-fid's ``BasicConv2d``: conv, BN,
    ReLU), in place: W' = W * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)."""
    for block in model.modules():
        if isinstance(getattr(block, "conv", None), nn.Conv2d) and isinstance(getattr(block, "bn", None), nn.BatchNorm2d):
            block.conv = fuse_conv_bn_eval(block.conv, block.bn)
            block.bn = nn.Identity()
    return model


@functools.lru_cache(maxsize=4)
def inception_network(path: Path, sha256: str, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    """pytorch-fid's network with its batch norms folded, on ``device``: built once per process for these
    weights (a reused Ray worker keeps it from one trial to the next), then only read (inference mode)."""
    return fold_batch_norms(build_pytorch_fid_inception(path)).to(device, memory_format=memory_format)


class InceptionFeatures:
    """Images in [-1, 1], (N, C, H, W) with C in {1, 3} -> pool3 features (N, 2048) float64.

    x -> clamp((x + 1) / 2, 0, 1), gray repeated to RGB; pytorch-fid then resizes bilinearly to 299x299
    and maps back to [-1, 1]. ``images_seen`` counts the images pushed through the network.
    ``channels_last`` (NHWC convs) is ~1.4x faster on CPU, and the batch norms folded into the convolutions
    (``fold_batch_norms``) another ~7%; together they move the features by ~1e-5, far below FID noise.
    ``progress``: a rich Progress to show each pass as a bar (None: silent, as inside Ray workers).
    """

    def __init__(
        self,
        weights: InceptionWeights | str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 50,
        channels_last: bool = True,
    ) -> None:
        self.weights = weights if isinstance(weights, InceptionWeights) else resolve_inception_weights(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.images_seen = 0
        self.progress: Progress | None = None
        log.info(self.describe())

    @property
    def model(self) -> nn.Module:
        """The network, built on first use (a cached reference needs none) and shared within the process."""
        return inception_network(self.weights.path, self.weights.sha256, self.device, self.memory_format)

    def describe(self) -> str:
        w = self.weights
        return f"FID InceptionV3 pool3 on {self.device}: {w.path} (sha256 {w.sha256}, source {w.source})"

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
        task = self.progress.add_task("Inception features", total=len(images), status="") if self.progress else None
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = images[start : start + self.batch_size].to(self.device, torch.float32)
                x = ((x + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1).contiguous(memory_format=self.memory_format)
                feats = self.model(x)[0].flatten(1)
                out[start : start + len(x)] = feats.double().cpu().numpy()
                self.images_seen += len(x)
                if task is not None:
                    self.progress.advance(task, len(x))
        if task is not None:
            self.progress.remove_task(task)
        return out


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu = mean_i f_i,  Sigma = 1/(N-1) sum_i (f_i - mu)(f_i - mu)^T."""
    if len(feats) < 2:
        raise ValueError("feature_statistics needs at least 2 feature rows")
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _trace_sqrt_product(sigma: torch.Tensor, factor: torch.Tensor) -> float:
    """Tr (S B B^T)^{1/2} = sum_i sqrt(lambda_i(B^T S B)): S B B^T has the eigenvalues of the symmetric
    PSD matrix B^T S B, plus zeros."""
    return float(torch.linalg.eigvalsh(factor.T @ sigma @ factor).clamp_min(0).sqrt().sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    factor1: np.ndarray | None = None,
) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^{1/2}.

    The trace term is sum_i sqrt(lambda_i(B^T S2 B)) for a factor S1 = B B^T: ``factor1`` if given
    (centred features / sqrt(N - 1), cheap when N < d), else a Cholesky factor of S1 or S2 (the roles
    swap, Tr (S1 S2)^{1/2} = Tr (S2 S1)^{1/2}). Only if both are singular does it fall back to pytorch-fid's
    scipy sqrtm(S1 S2), adding eps*I to both if that is not finite; round-off imaginary parts are dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    base = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2))
    s1, s2 = torch.from_numpy(sigma1).double(), torch.from_numpy(sigma2).double()
    if factor1 is not None:
        return base - 2 * _trace_sqrt_product(s2, torch.from_numpy(np.asarray(factor1, dtype=np.float64)))
    for s, other in ((s1, s2), (s2, s1)):
        chol, info = torch.linalg.cholesky_ex(s)
        if info.item() == 0:
            return base - 2 * _trace_sqrt_product(other, chol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular product is expected here
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            log.warning("FID: singular covariance product, adding %g to the diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(S1 S2)")
        covmean = covmean.real
    return base - 2 * float(np.trace(covmean))


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std (ddof 0) over random subsets of size m:

    MMD^2 = sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] / (m(m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2,
    m = min(subset_size, len(a), len(b)), subsets drawn without replacement (Binkowski et al. 2018).
    """
    m = min(subset_size, len(feats_a), len(feats_b))
    if m < 2:
        raise ValueError("KID needs at least 2 features per set")
    d = feats_a.shape[1]
    rng = np.random.default_rng(seed)
    mmd = np.empty(num_subsets)
    for i in range(num_subsets):
        x = np.asarray(feats_a[rng.choice(len(feats_a), m, replace=False)], dtype=np.float64)
        y = np.asarray(feats_b[rng.choice(len(feats_b), m, replace=False)], dtype=np.float64)
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmd[i] = same - 2 * kxy.mean()
    return float(mmd.mean()), float(mmd.std())


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Reference-set statistics: mu, sigma over all images, ``features`` (float32, at most
    ``ReferenceCache.max_features`` rows) for KID, and the full cache ``key``."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    key: dict[str, Any]


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(dict(key), sort_keys=True, default=str)


class ReferenceCache:
    """Reference statistics on disk, shared by concurrent trials.

    The file is ``ref-<sha256(key)[:20]>.npz``; key = the caller's mapping (dataset, split, image size,
    number of images, ...) plus the Inception weights' sha256. Writes are atomic (temp file + os.replace);
    an flock on ``<file>.lock`` makes one process compute while the others wait, then load. A corrupt or
    mismatching file is recomputed.
    """

    def __init__(self, cache_dir: str | Path, max_features: int = 10_000) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.max_features = max_features

    def path_for(self, key: Mapping[str, Any]) -> Path:
        return self.cache_dir / f"ref-{hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]}.npz"

    def get(
        self, key: Mapping[str, Any], compute_images: Callable[[], torch.Tensor], extractor: InceptionFeatures
    ) -> ReferenceStats:
        full_key = {**key, "inception_sha256": extractor.weights.sha256}
        path = self.path_for(full_key)
        if (stats := self._load(path, full_key)) is not None:
            return stats
        with self._locked(path):
            if (stats := self._load(path, full_key)) is not None:  # computed while we waited
                return stats
            feats = extractor(compute_images())
            mu, sigma = feature_statistics(feats)
            if len(feats) > self.max_features:
                rows = np.sort(np.random.default_rng(0).choice(len(feats), self.max_features, replace=False))
                feats = feats[rows]
            stats = ReferenceStats(mu, sigma, feats.astype(np.float32), json.loads(_canonical(full_key)))
            self._save(path, stats)
            log.info("reference statistics of %d images saved to %s", len(feats), path)
            return stats

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _load(path: Path, key: Mapping[str, Any]) -> ReferenceStats | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != _canonical(key):
                    raise ValueError("stored key differs")
                return ReferenceStats(z["mu"], z["sigma"], z["features"], json.loads(str(z["key"])))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("reference cache %s unusable (%s: %s); recomputing", path, type(e).__name__, e)
            return None

    @staticmethod
    def _save(path: Path, stats: ReferenceStats) -> None:
        write_atomic(path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, features=stats.features, key=_canonical(stats.key)))


def fid_kid(sample_features: np.ndarray, reference: ReferenceStats, kid_subset_size: int = 1000) -> dict[str, float]:
    """{"fid", "kid", "kid_std"} of sample features (N, 2048) against a reference."""
    mu, sigma = feature_statistics(sample_features)
    n, d = sample_features.shape
    factor = (sample_features - mu).T / np.sqrt(n - 1) if n <= d else None  # S = B B^T, B: (d, N)
    fid = frechet_distance(mu, sigma, reference.mu, reference.sigma, factor1=factor)
    kid, kid_std = kernel_inception_distance(sample_features, reference.features, subset_size=kid_subset_size)
    return {"fid": fid, "kid": kid, "kid_std": kid_std}
