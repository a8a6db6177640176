"""A real MLflow server stopped mid-sweep and started again: the trials keep training, what they record waits and is
delivered (or replayed from the Ray results by the driver), and every trial's metrics end up in MLflow once, with no
run left RUNNING."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import image_steps, smoke_sweep_command
from mlflow.tracking import MlflowClient

from sweep.ui import free_port, mlflow_server


def _reported(results: Path, key: str) -> list:
    """``key`` of every result the trials reported to Ray so far."""
    return [json.loads(line)[key] for f in results.glob("run_trial_*/result.json") for line in f.read_text().splitlines()]


def _wait_for(condition, driver: subprocess.Popen, what: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert driver.poll() is None, f"the sweep ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_server_stopped_and_restarted_mid_sweep(tmp_path, small_sweep_fid_cache):
    port, store, artifacts = free_port(), f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "artifacts"
    results = tmp_path / "ray_results" / "outage"
    with mlflow_server(store, artifacts, tmp_path / "server.log", port=port) as url:
        cmd, env = smoke_sweep_command(tmp_path, "name=outage", "sweep.num_trials=2", "sweep.search=random", "sweep.scheduler.type=fifo",
                                       "eval.num_samples=32", "eval.reference_images=128", f"tracking.tracking_uri={url}",
                                       fid_cache=small_sweep_fid_cache)
        log = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: 100 in _reported(results, "step"), driver, "first rung")
    # the server is down: the trials go on training and reporting to Ray
    _wait_for(lambda: _reported(results, "step").count(200) >= 1, driver, "rung while the server was down")
    with mlflow_server(store, artifacts, tmp_path / "server.log", port=port) as url:
        assert driver.wait(timeout=1200) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id], max_results=100)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 2 and len({c.data.tags["diffusion_sweep.trial_id"] for c in children}) == 2
        assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
        for child in children:
            history = client.get_metric_history(child.info.run_id, "fid")
            assert sorted(m.step for m in history) == [100, 200, 300], "every rung once, none lost, none twice"
            assert image_steps(client, child.info.run_id, "samples") == [100, 200, 300]
            assert child.data.tags["diffusion_sweep.status"] == "completed"
    queued = _reported(results, "tracking_queued")
    assert max(queued) > 0, f"the outage was not noticed (records queued at each rung: {queued}): the test tested nothing"
