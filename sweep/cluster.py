"""Checks against the Ray cluster a sweep joins (``--address``), before any trial starts.

* Versions: this machine and every node run the same Ray, Python and project (a fingerprint of its sources).
* Settings: a sweep that names no storage or tracking store of its own (flag, file or environment) takes the
  cluster's: ``DIFFUSION_SWEEP_STORAGE`` and ``MLFLOW_TRACKING_URI`` as the head node has them (``cluster.env``).
* Reach: since Ray 2.7 nothing is synced to the head, so every node must reach ``sweep.storage_path``, and every
  trial the tracking store. A folder or SQLite file on this machine is refused on a cluster that can add nodes
  (an autoscaler runs) or whose nodes do not see it; a remote storage path must take a probe object written by
  every node. Nodes the autoscaler adds later boot from the same image and settings: the check cannot see them.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import ray
from pyarrow import fs as pafs
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sweep.config import SweepConfig

SETTINGS = {"storage_path": "DIFFUSION_SWEEP_STORAGE", "tracking_uri": "MLFLOW_TRACKING_URI"}
PROBE_FOLDER = ".reach-probes"
PROBE_TIMEOUT_S = 120
FIX_STORAGE = "set DIFFUSION_SWEEP_STORAGE=s3://BUCKET/ray_results in cluster/cluster.env (cluster/aws_setup.sh writes it) or pass --storage-path s3://..."
FIX_TRACKING = "use the cluster's MLflow server (MLFLOW_TRACKING_URI, which cluster/node_env.sh sets on every node)"


class ClusterError(RuntimeError):
    """The sweep cannot run on this cluster; one line saying what to set."""


@dataclass(frozen=True)
class Node:
    """An alive node as its probe saw it."""

    node_id: str
    address: str
    is_head: bool
    versions: dict[str, str]
    settings: dict[str, str]


def project_fingerprint() -> str:
    """The installed project's version plus a hash of its Python sources: equal only for equal code."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(p for package in ("diffusion_core", "sweep") for p in (root / package).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{metadata.version('diffusion-sweep')}+{digest.hexdigest()[:12]}"


def local_versions() -> dict[str, str]:
    return {"Ray": ray.__version__, "Python": platform.python_version(), "diffusion-sweep": project_fingerprint()}


def _probe() -> dict[str, Any]:
    """Runs on a node: its versions and its cluster settings."""
    return {"versions": local_versions(), "settings": {v: os.environ[v] for v in SETTINGS.values() if os.environ.get(v)}}


@contextmanager
def joined(address: str) -> Iterator[None]:
    """Connected to the cluster as a driver for the block; version and connection failures as one line."""
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    except (RuntimeError, ConnectionError, ValueError, ray.exceptions.RayError) as exc:  # each with a long text
        text = " ".join(str(exc).split())
        found = re.findall(r"Ray: (\S+) Python: (\S+)", text)
        if text.startswith("Version mismatch") and len(found) == 2:
            (ray_there, py_there), (ray_here, py_here) = found
            raise ClusterError(f"--address {address}: the cluster runs Ray {ray_there} on Python {py_there}, this machine Ray "
                               f"{ray_here} on Python {py_here}; install the cluster's versions here (cluster/requirements.lock)") from None
        raise ClusterError(f"--address {address}: cannot join the Ray cluster ({text[:300]}); is it up, and is RAY_AUTH_MODE=token set?") from None
    try:
        yield
    finally:
        ray.shutdown()


def on_every_node(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` once on each alive node (a zero-CPU task pinned to it): node id -> result or exception."""
    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = {n: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(*args) for n in nodes}
    results: dict[str, Any] = {}
    for node, ref in refs.items():
        try:
            results[node] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.RayError as exc:  # the probe's own error (e.g. no permission), or a node that died meanwhile
            results[node] = exc
    return results


def autoscaling(wait_s: float = 15) -> bool:
    """An autoscaler with node types of its own runs: the cluster can add nodes. Every Ray head publishes an
    autoscaler status, but without an autoscaling config its node types are the read-only ``node_<id>`` ones.
    The first report may take an update interval (5 s) after the head starts: wait for it up to ``wait_s``."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + wait_s
    while True:
        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw).get("autoscaler_report") if raw else None
        if report is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    report = report or {}
    types = {*(report.get("active_nodes") or {}), *(report.get("node_type_mapping") or {}).values()}
    return any(not re.fullmatch(r"node_[0-9a-f]+", name) for name in types)


def survey(address: str) -> list[Node]:
    """Every alive node's versions and settings; a node whose probe fails is an error."""
    info = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    nodes = []
    for node_id, result in on_every_node(_probe).items():
        if node_id not in info:  # joined after the listing above: the next launch checks it
            continue
        where = info[node_id]["NodeManagerAddress"]
        if isinstance(result, Exception):
            raise ClusterError(f"--address {address}: node {where} cannot run the project ({_first_line(result)}); `ray up` the cluster again")
        head = "node:__internal_head__" in info[node_id]["Resources"]
        nodes.append(Node(node_id, where, head, result["versions"], result["settings"]))
    return nodes


def check_versions(address: str, nodes: list[Node]) -> None:
    """Every node runs this machine's Ray, Python and project."""
    mine = local_versions()
    for node in nodes:
        for what, have in mine.items():
            theirs = node.versions.get(what)
            if theirs != have:
                raise ClusterError(f"--address {address}: node {node.address} runs {what} {theirs}, this machine {have}; "
                                   "run the same code and versions (`ray up cluster/gpu.yaml` again, or check out the cluster's)")


def adopt_settings(cfg: SweepConfig, nodes: list[Node]) -> list[str]:
    """The head's storage and tracking settings for those the sweep leaves to the environment; what was taken."""
    head = next((n for n in nodes if n.is_head), None)
    taken = []
    for key, section, var in (("storage_path", cfg.sweep, SETTINGS["storage_path"]), ("tracking_uri", cfg.tracking, SETTINGS["tracking_uri"])):
        value = head.settings.get(var) if head else None
        if value and key not in section.model_fields_set and not os.environ.get(var):
            setattr(section, key, value)
            taken.append(f"{var}={value}")
    return taken


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(location) if "://" in location else (pafs.LocalFileSystem(), location)


def _write_probe(location: str, name: str) -> None:
    """Runs on a node: write a small object ``<name>-<node id>`` under ``location`` (a folder or a remote URI)."""
    filesystem, root = _filesystem(location)
    filesystem.create_dir(f"{root}/{PROBE_FOLDER}", recursive=True)
    with filesystem.open_output_stream(f"{root}/{PROBE_FOLDER}/{name}-{ray.get_runtime_context().get_node_id()}") as out:
        out.write(b"reached")


def _reach_url(url: str) -> None:
    """Runs on a node: the tracking server answers its health check."""
    urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10).close()


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def check_location(what: str, location: str, nodes: list[Node], grows: bool, fix: str) -> None:
    """Every node writes a probe under ``location`` that this machine then reads: refused when one cannot, or when
    ``location`` is a local folder and the cluster can add nodes."""
    if "://" not in location and grows:
        raise ClusterError(f"{what}: {location} is a folder on this machine, but this cluster adds nodes (an autoscaler runs) that cannot reach it; {fix}")
    name = uuid.uuid4().hex
    try:
        filesystem, root = _filesystem(location)
        try:
            _probe_from_every_node(what, location, nodes, name, fix, (filesystem, root))
        finally:
            for info in filesystem.get_file_info(pafs.FileSelector(f"{root}/{PROBE_FOLDER}", allow_not_found=True)):
                if info.base_name.startswith(name):
                    filesystem.delete_file(info.path)
    except OSError as exc:
        raise ClusterError(f"{what}: this machine cannot reach {location} ({_first_line(exc)}); {fix}") from None


def _probe_from_every_node(what: str, location: str, nodes: list[Node], name: str, fix: str,
                           opened: tuple[pafs.FileSystem, str]) -> None:
    filesystem, root = opened
    by_id = {n.node_id: n.address for n in nodes}
    for node_id, result in on_every_node(_write_probe, location, name).items():
        where = by_id.get(node_id, node_id)
        if isinstance(result, Exception):
            raise ClusterError(f"{what}: node {where} cannot write {location} ({_first_line(result)}); {fix}")
        if filesystem.get_file_info(f"{root}/{PROBE_FOLDER}/{name}-{node_id}").type == pafs.FileType.NotFound:
            raise ClusterError(f"{what}: node {where} writes {location} on a disk this machine does not see; {fix}")


def check_tracking_reach(what: str, uri: str, nodes: list[Node], grows: bool) -> None:
    """A tracking server every node reaches, or a SQLite file in a folder every node sees."""
    if uri.startswith(("http://", "https://")):
        by_id = {n.node_id: n.address for n in nodes}
        for node_id, result in on_every_node(_reach_url, uri).items():
            if isinstance(result, Exception):
                raise ClusterError(f"{what}: node {by_id.get(node_id, node_id)} cannot reach {uri} ({_first_line(result)}); {FIX_TRACKING}")
    elif uri.startswith("sqlite:///"):
        check_location(what, str(Path(uri[len("sqlite:///"):]).parent), nodes, grows, FIX_TRACKING)


def check_cluster(cfg: SweepConfig, address: str, tracking_uri: Callable[[str], str]) -> list[str]:
    """Join the cluster at ``address``, check versions, take its settings where the sweep has none, and check that
    every node reaches the storage and the tracking store; returns the settings taken, as ``NAME=value``."""
    with joined(address):
        nodes = survey(address)
        check_versions(address, nodes)
        taken = adopt_settings(cfg, nodes)
        grows = autoscaling()
        storage = cfg.sweep.storage_path
        local = storage if "://" in storage else str(Path(storage).expanduser().resolve())
        check_location(f"{cfg.source}: sweep.storage_path", local, nodes, grows, FIX_STORAGE)
        check_tracking_reach(f"{cfg.source}: tracking.tracking_uri", tracking_uri(cfg.tracking.tracking_uri), nodes, grows)
    return taken
