"""The sampling noise of a rung FID: its standard deviation over bootstrap resamples of the N generated samples,
the reference statistics held fixed (every trial is scored against the same reference, so only the samples'
noise separates two trials' FIDs).

FID = |mu_b - mu_r|^2 + Tr S_b + Tr S_r - 2 Tr (S_b S_r)^{1/2}, with S_b = X_b^T X_b, X_b = C P F / sqrt(N-1)
(F the N x d features, P the resampling, C the centring). Tr (S_b S_r)^{1/2} is the sum of the square roots of
the eigenvalues of X_b S_r X_b^T (N x N), so one product F S_r F^T (N x N) serves every replicate: a
replicate costs an N x N eigendecomposition, not a d x d matrix square root.
"""
from __future__ import annotations

import math

import numpy as np

from diffusion_core.metrics import ReferenceStats


def _centred(m: np.ndarray) -> np.ndarray:
    """C M C with C = I - 11^T/N: ``m`` with its row and column means removed."""
    return m - m.mean(axis=0, keepdims=True) - m.mean(axis=1, keepdims=True) + m.mean()


def resampled_fids(features: np.ndarray, reference: ReferenceStats, replicates: int, seed: int = 0) -> np.ndarray:
    """FID of ``replicates`` bootstrap resamples (rows drawn with replacement) of ``features`` (N, d);
    the identity resample gives the FID itself."""
    feats = np.asarray(features, dtype=np.float64)
    n = len(feats)
    gram = feats @ feats.T  # F F^T
    through_ref = feats @ reference.sigma @ feats.T  # F S_r F^T
    toward_ref = feats @ reference.mu  # F mu_r
    ref_terms = float(reference.mu @ reference.mu + np.trace(reference.sigma))
    rng = np.random.default_rng(seed)
    out = np.empty(replicates)
    for b in range(replicates):
        idx = rng.integers(0, n, n) if b else np.arange(n)  # row i of the resample is sample idx[i]
        weights = np.bincount(idx, minlength=n) / n  # mu_b = weights @ F
        mean_terms = weights @ gram @ weights - 2 * weights @ toward_ref
        trace_sample = np.trace(_centred(gram[np.ix_(idx, idx)])) / (n - 1)
        cross = np.linalg.eigvalsh(_centred(through_ref[np.ix_(idx, idx)]) / (n - 1)).clip(min=0)
        out[b] = mean_terms + ref_terms + trace_sample - 2 * np.sqrt(cross).sum()
    return out


def fid_std(features: np.ndarray, reference: ReferenceStats, replicates: int = 100, seed: int = 0,
            max_samples: int = 256) -> float:
    """Bootstrap standard deviation of the FID of ``features`` against ``reference`` (Efron & Tibshirani):
    how far a rung FID moves when its N samples are redrawn. NaN above ``max_samples`` rows: a replicate's N x N
    eigendecomposition grows as N^3, and at such N the FID's noise is small beside its differences between models."""
    if len(features) > max_samples:
        return math.nan
    return float(np.std(resampled_fids(features, reference, replicates + 1, seed)[1:], ddof=1))
