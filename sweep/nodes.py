"""The cluster's node types as the Ray cluster launcher config (``cluster/gpu.yaml``) declares them, their hourly
prices from the cluster settings (``cluster/cluster.env``), and where the trials of a sweep land: the node types
Ray's own autoscaler launches for them (its resource-demand scheduler, fed the trials' resource shape) and how
many trials fit on one node."""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffusion_core.config import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PRICES_VAR = "DIFFUSION_SWEEP_NODE_PRICES"
SETTINGS_FILE = "cluster.env"


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry: its logical resources, its scaling limit and its price."""

    name: str
    cpu: float
    gpu: float
    max_workers: int
    instance: str | None = None
    price_per_hour: float | None = None

    def trials_per_node(self, cpu: float, gpu: float) -> int:
        """How many trials of ``cpu``/``gpu`` fit on one node of this type at once."""
        fits = [math.floor(have / want + 1e-9) for have, want in ((self.cpu, cpu), (self.gpu, gpu)) if want > 0]
        return min(fits) if fits else 0

    def resources(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.cpu), ("GPU", self.gpu)) if v > 0}


@dataclass(frozen=True)
class ClusterSpec:
    """The node types of a cluster launcher config; ``head`` names the head's type."""

    source: Path
    head: str
    max_workers: int
    types: dict[str, NodeType]

    @property
    def workers(self) -> dict[str, NodeType]:
        return {name: t for name, t in self.types.items() if name != self.head}


@dataclass(frozen=True)
class Placement:
    """Where ``concurrent`` trials land: nodes launched per type, trials per node of each, and how many trials
    find no room even with every node the config allows (they wait)."""

    per_node: dict[str, int]
    nodes: dict[str, int]
    waiting: int


def resolve_cluster_config(path: str) -> Path:
    """``path`` as given (relative to the working folder), else relative to the project's root."""
    given = Path(path).expanduser()
    return given if given.is_absolute() or given.exists() else PROJECT_ROOT / given


def read_prices(settings: Path) -> dict[str, float]:
    """``$DIFFUSION_SWEEP_NODE_PRICES`` (``"type=USD_per_hour type=..."``), else the value the cluster settings
    file (``cluster.env``) exports under that name; {} when neither gives one."""
    text = os.environ.get(PRICES_VAR)
    if text is None and settings.is_file():
        match = re.search(rf"^\s*export\s+{PRICES_VAR}=(.*)$", settings.read_text(), re.MULTILINE)
        text = " ".join(shlex.split(match.group(1), comments=True)) if match else None
    prices = {}
    for item in (text or "").split():
        name, _, value = item.partition("=")
        try:
            prices[name] = float(value)
        except ValueError:
            raise ConfigError(f"{settings}: {PRICES_VAR}: {item!r} is not NODE_TYPE=USD_PER_HOUR") from None
    return prices


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """The node types of a cluster launcher YAML, with the prices of the ``cluster.env`` beside it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("available_node_types"), dict) or "head_node_type" not in raw:
        raise ConfigError(f"{path}: available_node_types/head_node_type: not a Ray cluster launcher config")
    prices = read_prices(path.parent / SETTINGS_FILE)
    types = {name: _node_type(path, name, spec, prices.get(name)) for name, spec in raw["available_node_types"].items()}
    if raw["head_node_type"] not in types:
        raise ConfigError(f"{path}: head_node_type: {raw['head_node_type']!r} is not one of available_node_types")
    return ClusterSpec(path, raw["head_node_type"], int(raw.get("max_workers", 0)), types)


def _node_type(path: Path, name: str, spec: Any, price: float | None) -> NodeType:
    resources = spec.get("resources") if isinstance(spec, dict) else None
    if not isinstance(resources, dict):
        raise ConfigError(f"{path}: available_node_types.{name}.resources: give the node's CPU and GPU counts")
    instance = (spec.get("node_config") or {}).get("InstanceType")
    return NodeType(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), int(spec.get("max_workers", 0)),
                    instance, price)


def place(spec: ClusterSpec, cpu: float, gpu: float, concurrent: int) -> Placement:
    """The nodes Ray's autoscaler launches for ``concurrent`` pending trials of ``cpu``/``gpu`` each on an
    empty cluster (its own ``get_nodes_for``: it prefers the type a trial fills best)."""
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    demand = {k: v for k, v in (("CPU", cpu), ("GPU", gpu)) if v > 0}
    node_types = {name: {"resources": t.resources(), "max_workers": t.max_workers} for name, t in spec.types.items()}
    head = spec.types[spec.head]
    room = head.trials_per_node(cpu, gpu) if demand else 0
    pending = [demand] * max(0, concurrent - room)
    scorer = _scorer(_default_utilization_scorer)
    nodes, residual = get_nodes_for(node_types, {spec.head: 1}, spec.head, spec.max_workers, pending, scorer)
    nodes = {name: count for name, count in nodes.items() if count}
    if room:
        nodes[spec.head] = 1
    per_node = {name: spec.types[name].trials_per_node(cpu, gpu) for name in nodes}
    return Placement(per_node, nodes, len(residual))


def _scorer(scorer: Any) -> Any:
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )

    summary = NodeAvailabilitySummary(node_availabilities={})
    return lambda node_resources, resources, node_type: scorer(node_resources, resources, node_type, node_availability_summary=summary)


def describe_placement(spec: ClusterSpec, cpu: float, gpu: float, concurrent: int) -> list[str]:
    """Lines saying which node type a trial lands on, how many fit per node, and how full each node is."""
    shape = f"{{cpu: {cpu:g}, gpu: {gpu:g}}}"
    fitting = {name: t.trials_per_node(cpu, gpu) for name, t in spec.types.items() if t.trials_per_node(cpu, gpu)}
    if not fitting:
        return [(f"WARNING: a trial needs {shape}, which no node type of {spec.source.name} has: it would wait forever; "
                 "change sweep.resources_per_trial or add a node type")]
    placement = place(spec, cpu, gpu, concurrent)
    lines = []
    for name, count in placement.nodes.items():
        t, per = spec.types[name], placement.per_node[name]
        used = ", ".join(f"{per * want:g} of {have:g} {unit}" for unit, want, have in (("CPUs", cpu, t.cpu), ("GPUs", gpu, t.gpu)) if have)
        lines.append(f"{count} x {name} ({t.instance or 'no instance type'}): {per} trial(s) of {shape} per node, using {used}")
    if placement.waiting:
        lines.append(f"WARNING: {placement.waiting} of {concurrent} concurrent trials find no node within max_workers; they wait")
    others = sorted(set(fitting) - set(placement.nodes))
    if others:
        lines.append("also fits (not chosen by the autoscaler while these have room): "
                     + ", ".join(f"{n} ({fitting[n]} per node)" for n in others))
    return lines
