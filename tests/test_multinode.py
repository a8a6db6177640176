"""The smoke sweep against a two-node Ray cluster started on this machine with `--address`:
trials run on more than one node and every trial's MLflow child run lands in the one store."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from helpers import FID_WEIGHTS, require

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_sweep_spreads_over_two_nodes_into_one_mlflow_store(two_node_cluster, tmp_path):
    require(FID_WEIGHTS, "FID Inception weights")
    env = {**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "sweep.launch", str(REPO / "search_spaces" / "smoke.yaml"),
           "--address", two_node_cluster.address, "--storage-path", str(tmp_path / "ray_results"),
           "--set", "name=multinode", "--set", "sweep.num_trials=4", "--set", "train.max_steps=200",
           "--set", "eval.num_samples=32", "--set", "eval.reference_images=128",
           "--set", f"tracking.tracking_uri={store}", "--set", f"eval.cache_dir={tmp_path / 'fid_cache'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("multinode")
    children = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=100)
    children = [c for c in children if "mlflow.parentRunId" in c.data.tags]
    assert len(children) == 4
    nodes = {c.data.tags["node_id"] for c in children}
    assert len(nodes) == 2, f"all trials ran on {nodes}"
    assert all(client.get_metric_history(c.info.run_id, "fid") for c in children)
    assert len(list((tmp_path / "fid_cache").glob("ref-*.npz"))) == 1
