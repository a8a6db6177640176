"""The checks against a cluster, on nodes simulated here (tests/test_cluster_e2e.py runs them on a real local
cluster): versions, the cluster's settings, and storage that every node must reach."""
from __future__ import annotations

import pytest

from sweep import cluster
from sweep.cluster import (
    ClusterError,
    Node,
    adopt_settings,
    check_location,
    check_versions,
    joined,
)
from sweep.config import parse_sweep

MISMATCH = ("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.4\n"
            "This process on node 10.0.0.5 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n")


def node(node_id: str = "n1", head: bool = False, **changes: str) -> Node:
    return Node(node_id, f"10.0.0.{len(node_id)}", head, {**cluster.local_versions(), **changes}, {})


def sweep(**sections) -> object:
    return parse_sweep({"name": "s", **sections}, "space.yaml")


def test_a_version_mismatch_on_joining_is_one_line(monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError(MISMATCH)

    monkeypatch.setattr(cluster.ray, "init", refuse)
    with pytest.raises(ClusterError) as caught, joined("10.0.0.1:6379"):
        pass
    message = str(caught.value)
    assert "\n" not in message and "Ray 2.59.0 on Python 3.11.4" in message and "Ray 2.60.0 on Python 3.11.7" in message


def test_a_node_with_other_code_is_named():
    check_versions("auto", [node("head", head=True), node("n2")])
    with pytest.raises(ClusterError, match=r"node 10.0.0.2 runs diffusion-sweep 0.1.0\+0000, this machine"):
        check_versions("auto", [node("head", head=True), node("n2", **{"diffusion-sweep": "0.1.0+0000"})])
    assert cluster.project_fingerprint().startswith("0.1.0+")


def test_the_head_s_settings_fill_only_what_the_sweep_leaves_open(monkeypatch):
    monkeypatch.delenv("DIFFUSION_SWEEP_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    head = Node("h", "10.0.0.1", True, {}, {"DIFFUSION_SWEEP_STORAGE": "s3://b/ray_results", "MLFLOW_TRACKING_URI": "http://10.0.0.1:5000"})
    cfg = sweep()
    assert adopt_settings(cfg, [head]) == ["DIFFUSION_SWEEP_STORAGE=s3://b/ray_results", "MLFLOW_TRACKING_URI=http://10.0.0.1:5000"]
    assert cfg.sweep.storage_path == "s3://b/ray_results" and cfg.tracking.tracking_uri == "http://10.0.0.1:5000"
    own = sweep(sweep={"storage_path": "s3://mine/results"})
    assert adopt_settings(own, [head]) == ["MLFLOW_TRACKING_URI=http://10.0.0.1:5000"]
    assert own.sweep.storage_path == "s3://mine/results"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert adopt_settings(sweep(), [head]) == ["DIFFUSION_SWEEP_STORAGE=s3://b/ray_results"]


def test_a_local_folder_is_refused_on_a_cluster_that_adds_nodes(tmp_path):
    with pytest.raises(ClusterError, match="adds nodes .* DIFFUSION_SWEEP_STORAGE=s3://"):
        check_location("space.yaml: sweep.storage_path", str(tmp_path), [node()], grows=True, fix=cluster.FIX_STORAGE)


def test_a_node_writing_to_its_own_disk_is_refused_and_probes_are_removed(tmp_path, monkeypatch):
    """Two machines, each with its own disk: the worker's probe lands where this machine cannot see it."""
    shared, elsewhere = tmp_path / "results", tmp_path / "worker-disk"

    def two_machines(fn, location, name):
        results = {}
        for node_id, disk in (("head", shared), ("worker", elsewhere)):
            monkeypatch.setattr(cluster.ray, "get_runtime_context", lambda n=node_id: type("C", (), {"get_node_id": lambda self: n})())
            results[node_id] = fn(str(disk), name)
        return results

    monkeypatch.setattr(cluster, "on_every_node", two_machines)
    nodes = [Node("head", "10.0.0.1", True, {}, {}), Node("worker", "10.0.0.2", False, {}, {})]
    with pytest.raises(ClusterError, match="node 10.0.0.2 writes .* on a disk this machine does not see"):
        check_location("space.yaml: sweep.storage_path", str(shared), nodes, grows=False, fix=cluster.FIX_STORAGE)
    assert list((shared / cluster.PROBE_FOLDER).iterdir()) == []

    monkeypatch.setattr(cluster, "on_every_node", lambda fn, location, name: {"head": OSError("Permission denied")})
    with pytest.raises(ClusterError, match=r"node 10.0.0.1 cannot write .* \(Permission denied\)"):
        check_location("space.yaml: sweep.storage_path", shared.as_uri(), nodes, grows=True, fix=cluster.FIX_STORAGE)


@pytest.mark.parametrize(("report", "grows"), [
    ({"active_nodes": {"node_41b1227871670701a3a6": 1}, "node_type_mapping": {"41b1": "node_41b1227871670701a3a6"}}, False),
    ({"active_nodes": {}, "node_type_mapping": {"fff00000": "ray.head.default"}}, True),
    ({"active_nodes": {"head": 1, "gpu_1x_a10g": 2}}, True),
])
def test_an_autoscaler_with_node_types_of_its_own_means_nodes_can_join(monkeypatch, report, grows):
    """Every head publishes an autoscaler status; only one started with an autoscaling config names node types."""
    import json

    import ray.experimental.internal_kv as kv

    monkeypatch.setattr(kv, "_internal_kv_get", lambda key: json.dumps({"monitor_pid": 1, "autoscaler_report": report}).encode())
    assert cluster.autoscaling(wait_s=0) is grows
