"""The cluster path on one machine: Ray's own autoscaler with its fake multi-node provider, whose worker node
types are cluster/gpu.yaml's (their CPU/GPU counts as logical resources), an S3 server (moto) on 127.0.0.1 as the
cluster's bucket, and a real MLflow server whose artifacts go to that bucket.

Started as ray.cluster_utils.AutoscalingCluster does (`ray start --head --autoscaling-config=FILE` with
RAY_FAKE_CLUSTER=1), but with the config built here (the pip wheel lacks its example.yaml), on free ports, in a
temp dir of its own, with token auth, and stopped by the pids of its own processes: never `ray stop`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import FID_WEIGHTS, REPO

from sweep.nodes import ClusterSpec, load_cluster_spec
from sweep.ui import free_port, mlflow_server

GPU_YAML = REPO / "cluster" / "gpu.yaml"
BUCKET = "sweep-bucket"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type
OBJECT_STORE_BYTES = 100 * 2**20


def fake_provider_config(spec: ClusterSpec, gcs_address: str) -> dict:
    """An autoscaler config for the fake multi-node provider with ``spec``'s worker types and head resources."""
    workers = {name: {"resources": {**t.resources(), "object_store_memory": OBJECT_STORE_BYTES}, "node_config": {},
                      "min_workers": 0, "max_workers": t.max_workers} for name, t in spec.workers.items()}
    head = {"resources": spec.types[spec.head].resources(), "node_config": {}, "max_workers": 0}
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
                   "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return {
        "cluster_name": "fake-" + spec.source.stem, "max_workers": spec.max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5, "head_node_type": FAKE_HEAD_TYPE, "auth": {}, "docker": {}, "file_mounts": {},
        "file_mounts_sync_continuously": False, **{key: [] for key in empty_lists},
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {**workers, FAKE_HEAD_TYPE: head},
    }


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line contains ``marker``, and their children; never this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    children = [int(c) for pid in found for c in _children(pid)]
    return sorted(set(found + children))


def _children(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split()
    except OSError:
        return []


def stop_processes(marker: str) -> None:
    """SIGTERM, then SIGKILL, every process of ours whose command line names ``marker`` (our temp dir)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_mentioning(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (child processes such as the MLflow server inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def s3_server(log_file: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with the bucket created; yields its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log_file}") from None
                time.sleep(0.3)
        urllib.request.urlopen(urllib.request.Request(f"{url}/{BUCKET}", method="PUT"), timeout=10).close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@dataclass
class FakeCluster:
    address: str
    temp_dir: Path
    client_env: dict[str, str]  # what a driver on this machine needs: token auth, S3 endpoint, the repository
    tracking_uri: str
    storage: str

    def worker_nodes(self) -> dict[str, int]:
        """Node id -> raylet pid of every worker node the autoscaler launched (the fake provider's ids)."""
        nodes = {}
        for pid in _processes_mentioning(f"--temp_dir={self.temp_dir}"):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not args[0].endswith(b"/raylet") or b"--head" in args:
                continue
            node = next(a for a in args if a.startswith(b"--node_id=")).split(b"=", 1)[1].decode()
            nodes[node] = pid
        return nodes

    def kill_node(self, node_id: str) -> None:
        """A worker node's sudden end, as a spot reclaim looks to Ray: its raylet killed, its workers with it."""
        pid = self.worker_nodes()[node_id]
        for child in _children(pid):
            os.kill(int(child), signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)


def start_head(config: Path, port: int, temp_dir: Path, env: dict[str, str]) -> None:
    """``ray start --head`` with 0 CPUs (trials go to the workers), on its own ports and temp dir."""
    ports = {f"--{name}={free_port()}" for name in ("dashboard-port", "dashboard-agent-listen-port")}
    cmd = ["ray", "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}", "--num-cpus=0", "--num-gpus=0",
           f"--object-store-memory={OBJECT_STORE_BYTES}", f"--autoscaling-config={config}", "--disable-usage-stats", *sorted(ports)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


@contextmanager
def fake_cluster(work: Path) -> Iterator[FakeCluster]:
    """The whole cluster: S3 bucket, MLflow server (artifacts in the bucket), autoscaling Ray; torn down after."""
    temp_dir = Path(tempfile.mkdtemp(prefix="dsc-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    with s3_server(work / "moto.log") as endpoint:
        s3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_ENDPOINT_URL": endpoint}
        with environment(**s3), mlflow_server(f"sqlite:///{work / 'mlflow.db'}", f"s3://{BUCKET}/mlflow-artifacts", work / "mlflow.log") as tracking:
            client = {**os.environ, **s3, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                      "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                      "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}
            for name in ("DIFFUSION_SWEEP_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
                client.pop(name, None)
            storage = f"s3://{BUCKET}/ray_results"
            # The head's environment is the cluster's settings (cluster.env, sourced by node_env.sh on a real node).
            head = {**client, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "5",
                    "DIFFUSION_SWEEP_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking}
            port = free_port()
            config = work / "autoscaler.yaml"
            config.write_text(json.dumps(fake_provider_config(load_cluster_spec(GPU_YAML), f"127.0.0.1:{port}")))
            try:
                start_head(config, port, temp_dir, head)
                yield FakeCluster(f"127.0.0.1:{port}", temp_dir, client, tracking, storage)
            finally:
                stop_processes(str(temp_dir))
                shutil.rmtree(temp_dir, ignore_errors=True)
