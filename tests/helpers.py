"""Small configs shared by the tests."""
from __future__ import annotations

from pathlib import Path

from diffusion_core.config import RunConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST_ROOT = SHARED / "data"
FID_WEIGHTS = SHARED / "data" / "fid_inception" / "pt_inception-2015-12-05-fczeroed.pth"


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
