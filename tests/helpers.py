"""Small configs shared by the tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffusion_core.config import RunConfig

DATA_ROOT = Path(os.environ.get("DIFFUSION_SWEEP_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MNIST_ROOT = DATA_ROOT
FID_WEIGHTS = DATA_ROOT / "fid_inception" / "pt_inception-2015-12-05-fczeroed.pth"


def require(path: Path, what: str) -> Path:
    """Skip when shared test data is missing, but fail under CI=true (CI always has it)."""
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is required under CI=true: {path}")
        pytest.skip(f"{what} not found: {path}")
    return path


def tiny_config(**sections) -> RunConfig:
    """A U-Net of a few thousand parameters on 8x8 digits: seconds per hundred steps on a CPU."""
    raw = {
        "data": {"dataset": "digits"},
        "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "num_heads": 2, "dropout": 0.1},
        "diffusion": {"schedule": "cosine", "timesteps": 100},
        "train": {"batch_size": 16, "lr": 1e-3, "max_steps": 200, "warmup_steps": 10, "ema_decay": 0.99},
        "eval": {"num_samples": 32, "sampling_steps": 10, "reference_images": 64, "kid_subset_size": 16, "inception_weights": str(FID_WEIGHTS)},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return RunConfig.model_validate(raw)
