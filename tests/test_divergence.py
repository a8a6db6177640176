"""A trial whose loss becomes NaN (learning rate 1.0, no clipping: NaN at step 14) stops at once, is
recorded as failed with the reason in MLflow, and the sweep finishes the other trials."""
import subprocess

from helpers import smoke_sweep_command, sweep_runs


def test_diverging_trial_fails_with_reason_and_the_sweep_finishes(tmp_path, small_sweep_fid_cache):
    cmd, env = smoke_sweep_command(
        tmp_path, "name=diverge", "train.lr={choice: [0.001, 1.0]}", "train.grad_clip=null", "train.warmup_steps=0",
        "sweep.num_trials=4", "sweep.max_failures=0", "train.max_steps=200", "sweep.scheduler.grace_period=200",
        "eval.num_samples=32", "eval.reference_images=128", fid_cache=small_sweep_fid_cache)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, _, children = sweep_runs(tmp_path, "diverge")
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
