"""Interpolation grids of a sweep's best trial, logged as images to that trial's MLflow child run."""
from __future__ import annotations

import io
import sys

import torch
from mlflow.exceptions import MlflowException

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.data import DatasetError
from diffusion_core.interpolate import interpolation_grids, write_grid
from sweep.summary import SweepSummary
from sweep.tracking import SweepTracker, TrialRun, load_best_model

ARTIFACT_DIR = "interpolation"


def log_best_interpolations(tracker: SweepTracker, summary: SweepSummary, rows: int = 4, cols: int = 8, pairs: int = 4) -> list[str]:
    """Load the best trial's ``best_ema.pt`` from MLflow and log its noise-slerp grid and x_t-space
    grid of real images under ``interpolation/``; returns the artifact paths. A problem is one warning
    line: the sweep's results stand without the figures."""
    best = summary.best
    if best is None or not best.run_id:
        return []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, cfg = load_best_model(tracker.client, best.run_id, device)
        grids = interpolation_grids(model, cfg, rows=rows, cols=cols, pairs=pairs, device=device)
        run = TrialRun(tracker.client, best.run_id)
        logged = []
        for name, (images, nrow) in grids.items():
            buffer = io.BytesIO()
            write_grid(images, nrow, buffer)
            run.log_png(buffer.getvalue(), f"{ARTIFACT_DIR}/{name}.png")
            logged.append(f"{ARTIFACT_DIR}/{name}.png")
    except (CheckpointError, DatasetError, MlflowException, OSError) as exc:
        print(f"warning: no interpolation grids for the best trial {best.trial_id}: {exc}", file=sys.stderr)
        return []
    print(f"interpolation grids of the best trial {best.trial_id}: {', '.join(logged)} in MLflow run {best.run_id}")
    return logged
