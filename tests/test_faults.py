"""Four trials at once sharing one FID reference cache and one SQLite MLflow store, one of whose
processes is killed mid-training: Tune restarts it from its latest checkpoint, nothing is corrupted."""
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from helpers import smoke_sweep_command, sweep_runs


def _trial_pids() -> list[int]:
    # the process title names the method running now (train, or none between two calls)
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_trial_process_restarts_from_checkpoint_with_four_concurrent_trials(tmp_path, small_sweep_fid_cache):
    cmd, env = smoke_sweep_command(
        tmp_path, "name=faults", "sweep.num_trials=4", "sweep.max_concurrent=4", "sweep.resources_per_trial.cpu=0.5",
        "sweep.scheduler.grace_period=300", "sweep.max_failures=2", "eval.num_samples=32", "eval.reference_images=128",
        fid_cache=small_sweep_fid_cache)
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    experiment = tmp_path / "ray_results" / "faults"
    deadline = time.time() + 900
    while not list(experiment.glob("run_trial_*/checkpoint_000000")):
        assert driver.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    victim_dir = next(experiment.glob("run_trial_*/checkpoint_000000")).parent
    victim_trial = victim_dir.name.split("_")[2]
    # Tune runs each trial in a working folder named like its results folder
    while not (victims := [p for p in _trial_pids() if _cwd_name(p) == victim_dir.name]):
        assert time.time() < deadline, [(p, _cwd_name(p)) for p in _trial_pids()]
        time.sleep(0.2)
    victim = victims[0]
    assert len(_trial_pids()) >= 2
    os.kill(victim, signal.SIGKILL)
    output, _ = driver.communicate(timeout=1500)
    assert driver.returncode == 0, output[-4000:]

    for folder in experiment.glob("run_trial_*"):
        steps = [json.loads(line)["step"] for line in (folder / "result.json").read_text().splitlines()]
        assert steps[-1] == 300, (folder.name, steps)

    client, _, children = sweep_runs(tmp_path, "faults")
    assert len(children) == 4 and len({c.data.tags["diffusion_sweep.trial_id"] for c in children}) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    killed = next(c for c in children if c.data.tags["diffusion_sweep.trial_id"] == victim_trial)
    assert int(killed.data.tags["restored_at_step"]) >= 100, "the killed trial restarted from scratch"
    assert sorted({m.step for m in client.get_metric_history(killed.info.run_id, "fid")}) == [100, 200, 300]

    assert sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    caches = list(small_sweep_fid_cache.glob("ref-*.npz"))
    assert len(caches) == 1


def _cwd_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).name
    except OSError:
        return ""
