"""A trial whose loss becomes NaN (learning rate 1.0, no clipping: NaN at step 14) stops at once, is
recorded as failed with the reason in MLflow, and the sweep finishes the other trials."""
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from helpers import FID_WEIGHTS, require

REPO = Path(__file__).resolve().parents[1]


def test_diverging_trial_fails_with_reason_and_the_sweep_finishes(tmp_path):
    require(FID_WEIGHTS, "FID Inception weights")
    env = {**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}
    store = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "sweep.launch", str(REPO / "search_spaces" / "smoke.yaml"),
           "--storage-path", str(tmp_path / "ray_results"), "--set", "name=diverge",
           "--set", "train.lr={choice: [0.001, 1.0]}", "--set", "train.grad_clip=null", "--set", "train.warmup_steps=0",
           "--set", "sweep.num_trials=4", "--set", "sweep.max_failures=0", "--set", "train.max_steps=200",
           "--set", "sweep.scheduler.grace_period=200", "--set", "eval.num_samples=32", "--set", "eval.reference_images=128",
           "--set", f"tracking.tracking_uri=sqlite:///{store}", "--set", f"eval.cache_dir={tmp_path / 'fid_cache'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("diverge")
    children = [r for r in client.search_runs([exp.experiment_id], max_results=100) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    diverged = [c for c in children if float(c.data.params["train.lr"]) == 1.0]
    healthy = [c for c in children if float(c.data.params["train.lr"]) != 1.0]
    assert diverged and healthy, "the seeded sampler should draw both learning rates"
    for run in diverged:
        assert run.info.status == "FAILED" and run.data.tags["diffusion_sweep.status"] == "failed"
        assert "diverged: loss became nan at step" in run.data.tags["failure_reason"]
        assert not client.get_metric_history(run.info.run_id, "fid"), "stopped before its first evaluation"
    for run in healthy:
        assert run.info.status == "FINISHED" and run.data.tags["diffusion_sweep.status"] == "completed"
    assert f"{len(diverged)} failed" in proc.stdout
