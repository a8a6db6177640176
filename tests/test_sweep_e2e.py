"""The smoke sweep end to end on this CPU: Ray Tune + OptunaSearch + ASHA + MLflow, read back."""
import json
from pathlib import Path

from helpers import image_steps, sweep_runs

SIX = ["diffusion.schedule", "diffusion.timesteps", "train.lr", "model.dropout", "model.num_heads", "train.ema_rates"]


def test_summary_printed(smoke_sweep):
    _, output = smoke_sweep
    assert "best FID" in output and "pruned by ASHA" in output and "mlflow ui --backend-store-uri sqlite:///" in output
    assert "best EMA rate: " in output


def test_mlflow_has_one_child_run_per_trial_with_history_images_and_checkpoint(smoke_sweep):
    work, _ = smoke_sweep
    client, parents, children = sweep_runs(work, "smoke")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_fid"] > 0
    assert len(children) >= 6
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    trial_ids = [c.data.tags["diffusion_sweep.trial_id"] for c in children]
    assert len(set(trial_ids)) == len(trial_ids), "a trial has more than one child run"

    every, max_steps = 100, 300
    statuses = {}
    for child in children:
        assert set(SIX) <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "fid")
        steps = sorted(m.step for m in history)
        assert steps == list(range(every, steps[-1] + 1, every)), steps
        assert image_steps(client, child.info.run_id, "samples") == steps, "a sample grid per rung, by key and step"
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == ["checkpoints/checkpoint_best.pt"]
        status = child.data.tags["diffusion_sweep.status"]
        statuses[child.info.run_id] = status
        expected_run_status = {"completed": "FINISHED", "pruned": "KILLED"}[status]
        assert child.info.status == expected_run_status
        assert (steps[-1] == max_steps) == (status == "completed")
    assert "pruned" in statuses.values(), "ASHA stopped no trial before the maximum step"
    assert "completed" in statuses.values()

    for dim in SIX:
        assert len({c.data.params[dim] for c in children}) > 1, f"{dim} took a single value"


def test_ray_results_hold_every_trial(smoke_sweep):
    work, _ = smoke_sweep
    trial_dirs = [p for p in (work / "ray_results" / "smoke").iterdir() if p.is_dir() and p.name.startswith("run_trial")]
    assert len(trial_dirs) >= 6
    last_steps = []
    for folder in trial_dirs:
        lines = (folder / "result.json").read_text().splitlines()
        last_steps.append(json.loads(lines[-1])["step"])
    assert min(last_steps) < 300 and max(last_steps) == 300


def test_surviving_trials_ran_a_sampling_study_on_their_final_checkpoint(smoke_sweep):
    work, output = smoke_sweep
    client, parents, children = sweep_runs(work, "smoke")
    completed = [c for c in children if c.data.tags["diffusion_sweep.status"] == "completed"]
    for child in children:
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        studied = "sampling_study.json" in artifacts
        assert studied == (child in completed), (child.data.tags["diffusion_sweep.status"], artifacts)
    for child in completed:
        metrics = child.data.metrics
        assert metrics["sampling_best_fid"] <= metrics["sampling_default_fid"]
        best = json.loads(child.data.tags["sampling_best"])
        assert best["eval.sampler"] in ("ddim", "ddpm") and 10 <= best["eval.sampling_steps"] <= 40
        folder = work / "tables" / child.info.run_id
        folder.mkdir(parents=True)
        table = json.loads(Path(client.download_artifacts(child.info.run_id, "sampling_study.json", str(folder))).read_text())
        assert len(table["data"]) == 1 + 3  # the configured sampler, then eval.search.trials configurations
    parent = parents[0]
    best_run = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    if best_run in completed:
        assert json.loads(parent.data.tags["best_sampling"]) == json.loads(best_run.data.tags["sampling_best"])
        assert "best sampling: sampler=" in output


def test_trials_reuse_worker_processes(smoke_sweep):
    """Ray keeps each trial's worker process for the next trial (reuse_actors): six trials, two at a time, must
    not start six processes (each start re-imports torch, Ray and MLflow, ~10 s on 2 cores)."""
    work, _ = smoke_sweep
    _, _, children = sweep_runs(work, "smoke")
    pids = [c.data.tags["worker_pid"] for c in children]
    assert len(set(pids)) < len(pids), pids
