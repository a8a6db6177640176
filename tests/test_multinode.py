"""The smoke sweep against a two-node Ray cluster started on this machine with `--address`:
trials run on more than one node and every trial's MLflow child run lands in the one store.
Each trial also keeps an EMA bank (a searched rate plus 0.999), evaluated at every rung."""
import json
import subprocess

import pytest
from helpers import smoke_sweep_command, sweep_runs
from ray.cluster_utils import Cluster


@pytest.fixture
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_sweep_spreads_over_two_nodes_into_one_mlflow_store(two_node_cluster, tmp_path, small_sweep_fid_cache):
    cmd, env = smoke_sweep_command(tmp_path, "name=multinode", "sweep.num_trials=4", "train.max_steps=200",
                                   "eval.num_samples=32", "eval.reference_images=128",
                                   "train.ema_rates={choice: [[0.9, 0.999], [0.99, 0.999]]}", fid_cache=small_sweep_fid_cache)
    cmd += ["--address", two_node_cluster.address]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, _, children = sweep_runs(tmp_path, "multinode")
    assert len(children) == 4
    nodes = {c.data.tags["node_id"] for c in children}
    assert len(nodes) == 2, f"all trials ran on {nodes}"
    for child in children:
        fid = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "fid")}
        searched_rate = json.loads(child.data.params["train.ema_rates"])[0]
        banked = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "fid_ema_0.999")}
        searched = {m.step: m.value for m in client.get_metric_history(child.info.run_id, f"fid_ema_{searched_rate:g}")}
        assert fid and set(fid) == set(banked) == set(searched), "the EMA bank was not evaluated at every rung"
        assert all(fid[s] == min(banked[s], searched[s]) for s in fid), "reported FID is not the bank's best"
    assert "best EMA rate: " in proc.stdout
    assert len(list(small_sweep_fid_cache.glob("ref-*.npz"))) == 1  # one reference for both nodes
