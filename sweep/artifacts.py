"""What a trial leaves in the tracker besides metrics, under one set of names: its sample grid per rung (an image
key), its best model file, and the way back from the tracker to a network."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion_core.checkpoint import load_model
from diffusion_core.config import RunConfig
from diffusion_core.loop import BEST
from sweep.tracking import Tracker

SAMPLES_KEY = "samples"  # a trial's sample grid at each rung, logged with key and step
INTERPOLATION_KEY = "interpolation"  # the best trial's interpolation grids: interpolation/<name>
CHECKPOINTS = "checkpoints"  # the folder of a trial run's best model file
BEST_MODEL = f"{CHECKPOINTS}/{BEST}"  # the best EMA network, its run config and what it scored
SAMPLING_STUDY = "sampling_study.json"  # the final-rung sampling study's table


def download_best_model(tracker: Tracker, run_id: str, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """A trial run's best network (eval mode), run config and info, from its ``BEST_MODEL`` artifact."""
    with tempfile.TemporaryDirectory() as folder:
        return load_model(tracker.download(run_id, BEST_MODEL, Path(folder)), device)
