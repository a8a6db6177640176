"""``python -m sweep.tune_sampling``: a sampling study on demand for a finished trial of the smoke sweep."""
import json
import os
import subprocess
import sys

from helpers import FID_WEIGHTS, store_uri, sweep_runs


def _tune(work, *args):
    env = {**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}
    return subprocess.run([sys.executable, "-m", "sweep.tune_sampling", *args, "--tracking-uri", store_uri(work)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_tune_sampling_by_trial_id_logs_a_study_without_training(smoke_sweep):
    work, _ = smoke_sweep
    client, _, children = sweep_runs(work, "smoke")
    child = next(c for c in children if c.data.tags["diffusion_sweep.status"] == "completed")
    steps_before = [m.step for m in client.get_metric_history(child.info.run_id, "fid")]
    proc = _tune(work, child.data.tags["diffusion_sweep.trial_id"], "--trials", "2", "--num-samples", "16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "sampling study (2 configurations, 16 samples each): default FID" in proc.stdout
    assert proc.stdout.count("  FID ") == 3  # the run's own settings, then two proposed configurations
    path = client.download_artifacts(child.info.run_id, "sampling_study_cli.json", str(work))
    with open(path) as f:
        assert len(json.load(f)["data"]) == 3
    assert json.loads(client.get_run(child.info.run_id).data.tags["sampling_best_cli"])["eval.sampler"] in ("ddim", "ddpm")
    assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")] == steps_before


def test_unknown_run_is_one_line_error(smoke_sweep):
    work, _ = smoke_sweep
    proc = _tune(work, "no_such_trial")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: no_such_trial: no MLflow run or trial with this id in {store_uri(work)} (pass --tracking-uri?)"]
