"""The smoke sweep end to end on this CPU: Ray Tune + OptunaSearch + ASHA + MLflow, read back."""
import json

from helpers import sweep_runs

SIX = ["diffusion.schedule", "diffusion.timesteps", "train.lr", "model.dropout", "model.num_heads", "train.ema_decay"]


def test_summary_printed(smoke_sweep):
    _, output = smoke_sweep
    assert "best FID" in output and "pruned by ASHA" in output and "mlflow ui --backend-store-uri sqlite:///" in output


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
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
        assert len(artifacts) == len(steps) and all(p.endswith(".png") for p in artifacts)
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == ["checkpoints/best_ema.pt"]
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
