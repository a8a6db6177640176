"""Small configs shared by the tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from diffusion_core.checkpoint import save_model
from diffusion_core.config import RunConfig
from diffusion_core.evaluate import EvalResult
from diffusion_core.unet import build_unet

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
        "train": {"batch_size": 16, "lr": 1e-3, "max_steps": 200, "warmup_steps": 10, "ema_rates": 0.99},
        "eval": {"num_samples": 32, "sampling_steps": 10, "reference_images": 64, "kid_subset_size": 16, "inception_weights": str(FID_WEIGHTS)},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return RunConfig.model_validate(raw)


def tiny_model_file(path: Path) -> Path:
    """An untrained class-conditional tiny network as a model file with made-up scores (sampling, registering and
    loading need no training to be tested)."""
    cfg = tiny_config(model={"class_conditional": True}, eval={"sampling_steps": 5, "batch_size": 4})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        weights = build_unet(cfg).state_dict()
    return save_model(path, weights, cfg, {"step": 40, "fid": 123.4, "kid": 0.05, "ema_rate": 0.99})


REPO = Path(__file__).resolve().parents[1]
SMOKE_SPACE = REPO / "search_spaces" / "smoke.yaml"


def smoke_sweep_command(tmp_path: Path, *assignments: str, fid_cache: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """`python -m sweep.launch smoke.yaml` isolated in ``tmp_path`` (its own Ray results and MLflow store;
    its own FID cache unless ``fid_cache`` names one to share), with ``key=value`` overrides; returns the
    command and its environment."""
    require(FID_WEIGHTS, "FID Inception weights")
    cache = fid_cache or tmp_path / "fid_cache"
    cmd = [sys.executable, "-m", "sweep.launch", str(SMOKE_SPACE), "--storage-path", str(tmp_path / "ray_results"),
           "--set", f"tracking.tracking_uri={store_uri(tmp_path)}", "--set", f"eval.cache_dir={cache}"]
    for assignment in assignments:
        cmd += ["--set", assignment]
    return cmd, {**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def sweep_runs(tmp_path: Path, experiment: str) -> tuple[MlflowClient, list, list]:
    """The MLflow client of a sweep run by ``smoke_sweep_command``, its parent runs and its child runs."""
    client = MlflowClient(store_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def ema_model(trainer) -> torch.nn.Module:
    """The EMA network of a trainer whose bank holds one rate."""
    (model,) = trainer.emas.models().values()
    return model


def image_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """The steps at which a run logged a full-size image under ``key`` (MLflow's key/step image layout)."""
    prefix = f"images/{key.replace('/', '~')}+step+"
    paths = [a.path for a in client.list_artifacts(run_id, "images")]
    return sorted(int(p[len(prefix):].split("+", 1)[0]) for p in paths if p.startswith(prefix) and p.endswith(".png"))


class ScriptedEvaluator:
    """Stands in for the FID evaluation: FIDs from a script (one per call), or a function of the weights; it draws
    from the global RNG as building the Inception network does."""

    def __init__(self, fids: list[float] | None = None) -> None:
        self.fids, self.calls = fids, 0

    def __call__(self, model: torch.nn.Module, schedule) -> EvalResult:
        torch.randn(100)
        self.calls += 1
        fid = self.fids[self.calls - 1] if self.fids else float(sum(p.double().abs().sum() for p in model.parameters()))
        return EvalResult(fid, fid / 100, 0.0, 0.0, torch.zeros(3, 2, 2, dtype=torch.uint8))
