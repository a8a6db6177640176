"""Interpolation grids of a sweep's best trial, logged as images to that trial's tracked run."""
from __future__ import annotations

import io
import sys

import torch

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.data import DatasetError
from diffusion_core.interpolate import interpolation_grids, write_grid
from sweep.artifacts import INTERPOLATION_KEY, download_best_model
from sweep.report.model import Sweep
from sweep.tracking import Tracker, TrackingError


def log_best_interpolations(tracker: Tracker, sweep: Sweep, rows: int = 4, cols: int = 8, pairs: int = 4) -> list[str]:
    """Log the best trial's noise-slerp grid and x_t-space grid of real images as images under
    ``interpolation/<name>``; returns their keys. A problem is one warning line: the sweep's results stand
    without the figures."""
    best = sweep.best
    if best is None or not best.run_id:
        return []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, cfg, _ = download_best_model(tracker, best.run_id, device)
        grids = interpolation_grids(model, cfg, rows=rows, cols=cols, pairs=pairs, device=device)
        run = tracker.run(best.run_id)
        logged = []
        for name, (images, nrow) in grids.items():
            buffer = io.BytesIO()
            write_grid(images, nrow, buffer)
            run.log_image(buffer.getvalue(), f"{INTERPOLATION_KEY}/{name}", best.last_step)
            logged.append(f"{INTERPOLATION_KEY}/{name}")
    except (CheckpointError, DatasetError, TrackingError, OSError) as exc:
        print(f"warning: no interpolation grids for the best trial {best.trial_id}: {exc}", file=sys.stderr)
        return []
    print(f"interpolation grids of the best trial {best.trial_id}: {', '.join(logged)} in run {best.run_id}")
    return logged
