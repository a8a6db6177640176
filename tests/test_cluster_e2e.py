"""The cluster path, run here: `python -m sweep.launch --address ...` on Ray's autoscaling cluster with
cluster/gpu.yaml's worker node types (fake multi-node provider), cifar.yaml's resource shape per trial, an S3
bucket (moto on 127.0.0.1) reached as s3://, and one MLflow server; then a worker node killed under a running
trial, as a spot reclaim looks to Ray. One cluster (tests/fake_cluster.py) serves every test here."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_cluster import BUCKET, FakeCluster, fake_cluster
from helpers import REPO, SMOKE_SPACE
from mlflow.tracking import MlflowClient
from pyarrow import fs as pafs

pytestmark = pytest.mark.slow
CIFAR_SPACE = REPO / "search_spaces" / "cifar.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> FakeCluster:
    with fake_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def cluster_space(folder: Path, name: str, fid_cache: Path, **sweep) -> Path:
    """smoke.yaml's tiny model on digits with cifar.yaml's resources per trial, leaving storage and tracking to
    the cluster; a few steps, FID on few samples."""
    raw = yaml.safe_load(SMOKE_SPACE.read_text())
    raw["name"] = name
    raw["eval"].pop("search")
    raw["eval"].update(num_samples=16, batch_size=16, sampling_steps=10, reference_images=128, kid_subset_size=8, cache_dir=str(fid_cache))
    raw["train"].update(max_steps=200)
    raw["sweep"].pop("storage_path")
    raw.pop("tracking")
    resources = yaml.safe_load(CIFAR_SPACE.read_text())["sweep"]["resources_per_trial"]
    raw["sweep"].update({"num_trials": 2, "max_concurrent": 2, "resources_per_trial": resources, "max_failures": 2, **sweep})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def launch(cluster: FakeCluster, space: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sweep.launch", str(space), "--address", cluster.address, *args]


def trial_runs(cluster: FakeCluster, experiment: str) -> list:
    client = MlflowClient(cluster.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=100) if found else []
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def bucket_files(cluster: FakeCluster, prefix: str) -> list[str]:
    filesystem = pafs.S3FileSystem(endpoint_override=cluster.client_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                                   region="us-east-1")
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    return [info.path for info in filesystem.get_file_info(selector) if info.type == pafs.FileType.File]


def test_sweep_autoscales_workers_checkpoints_to_s3_and_tracks_in_one_server(cluster, tmp_path, small_sweep_fid_cache):
    space = cluster_space(tmp_path, "on-cluster", small_sweep_fid_cache)
    proc = subprocess.run(launch(cluster, space), check=False, cwd=tmp_path, env=cluster.client_env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Storage and tracking were taken from the cluster's settings: the sweep file names neither.
    assert f"from the cluster's settings: DIFFUSION_SWEEP_STORAGE={cluster.storage}" in proc.stdout
    assert f"from the cluster's settings: MLFLOW_TRACKING_URI={cluster.tracking_uri}" in proc.stdout

    runs = trial_runs(cluster, "on-cluster")
    assert len(runs) == 2 and all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    workers = cluster.worker_nodes()  # launched by the autoscaler: the head has no CPU, so trials cannot run there
    assert workers, "the autoscaler launched no worker node"
    assert {r.data.tags["node_id"] for r in runs} <= set(workers)
    files = bucket_files(cluster, "ray_results/on-cluster")
    for run in runs:
        trial = run.data.tags["diffusion_sweep.trial_id"]
        assert any(f"_{trial}_" in f and f.endswith("/checkpoint_last.pt") for f in files), f"no checkpoint of {trial} in the bucket"
    images = bucket_files(cluster, "mlflow-artifacts")
    assert all(any(r.info.run_id in f and "/images/samples" in f for f in images) for r in runs), "sample grids not in the bucket"


def test_a_local_storage_path_is_refused_before_any_trial(cluster, tmp_path, small_sweep_fid_cache):
    space = cluster_space(tmp_path, "local-storage", small_sweep_fid_cache)
    proc = subprocess.run(launch(cluster, space, "--storage-path", str(tmp_path / "ray_results")), check=False, cwd=tmp_path,
                          env=cluster.client_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "sweep.storage_path" in line and "autoscaler" in line and "DIFFUSION_SWEEP_STORAGE=s3://" in line
    assert trial_runs(cluster, "local-storage") == []


def wait_for_checkpointed_trial(cluster: FakeCluster, experiment: str, proc: subprocess.Popen, timeout_s: float):
    """The first trial run that still runs and whose first rung's checkpoint is in the bucket (then a moment more,
    so that Tune has taken the checkpoint in too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        files = bucket_files(cluster, f"ray_results/{experiment}")
        for run in trial_runs(cluster, experiment):
            trial = run.data.tags["diffusion_sweep.trial_id"]
            if run.info.status == "RUNNING" and any(f"_{trial}_" in f and f.endswith("/checkpoint_last.pt") for f in files):
                time.sleep(2)
                return run
        time.sleep(0.5)
    raise AssertionError(f"no trial checkpointed a rung in {timeout_s:.0f} s (sweep exit code {proc.poll()})")


def test_a_killed_worker_node_s_trial_resumes_elsewhere_in_its_own_run(cluster, tmp_path, small_sweep_fid_cache):
    space = cluster_space(tmp_path, "node-loss", small_sweep_fid_cache, scheduler={"type": "fifo"})
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(launch(cluster, space, "--set", "train.max_steps=300"), cwd=tmp_path, env=cluster.client_env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            victim = wait_for_checkpointed_trial(cluster, "node-loss", proc, timeout_s=600)
            lost = victim.data.tags["node_id"]
            cluster.kill_node(lost)
            assert proc.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    runs = {r.info.run_id: r for r in trial_runs(cluster, "node-loss")}
    assert len(runs) == 2, "a restarted trial opened a second run"
    resumed = runs[victim.info.run_id]
    assert resumed.data.tags["node_id"] != lost
    assert int(resumed.data.tags["restored_at_step"]) >= 100, "the trial started over instead of resuming from its checkpoint"
    client = MlflowClient(cluster.tracking_uri)
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert {m.step for m in client.get_metric_history(run.info.run_id, "fid")} == {100, 200, 300}
