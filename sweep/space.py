"""Search dimensions: parsed from the sweep file, built as Optuna's distributions (the one place that happens, for
the run and for its validation alike), and sampled by a define-by-run function (conditional dimensions are plain
branches)."""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, Field

from diffusion_core.config import SEARCH_KINDS as KINDS
from diffusion_core.config import ConfigError

DIMENSION_KEYS = set(KINDS) | {"step", "log", "if"}
MAX_INT_PROBES = 64  # an int range with more drawable values is probed at its ends and their neighbours
_PRIMITIVES = (str, int, float, bool, type(None))


class Dimension(BaseModel):
    """One search dimension at ``path``; ``condition`` maps other dimensions' paths to required values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    kind: Literal["choice", "uniform", "loguniform", "int"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    condition: dict[str, Any] = Field(default_factory=dict)

    def candidates(self) -> list[Any]:
        """The choices, or both ends of the range (as Optuna draws them: a stepped range ends on a step)."""
        if self.kind == "choice":
            return list(self.choices or [])
        dist = distribution(self)
        return [dist.low, dist.high]

    def probes(self) -> list[Any]:
        """The values whose combinations validation tries: every choice; every drawable int when there are at most
        ``MAX_INT_PROBES``, else the ends and their neighbours; a float range's ends (its limits are bounds)."""
        dist = distribution(self)
        if not isinstance(dist, IntDistribution):
            return self.candidates()
        values = range(dist.low, dist.high + 1, dist.step)
        if dist.log or len(values) > MAX_INT_PROBES:
            return sorted({values[0], values[1], values[-2], values[-1]})
        return list(values)

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(sampled.get(path) == value for path, value in self.condition.items())


def categorical_label(value: Any) -> Any:
    """Optuna's categorical values must be primitives: lists and mappings go in as JSON text."""
    return value if isinstance(value, _PRIMITIVES) else json.dumps(value)


def distribution(dim: Dimension) -> BaseDistribution:
    """The dimension as Optuna's distribution: the one place a dimension becomes what Optuna samples from (Optuna's
    own checks on bounds, ``step`` and ``log`` run here)."""
    if dim.kind == "choice":
        return CategoricalDistribution([categorical_label(c) for c in dim.choices or []])
    if dim.kind == "int":
        return IntDistribution(int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return FloatDistribution(dim.low, dim.high, step=dim.step, log=dim.log)


def _fail(source: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {message}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range_dimension(source: str, key: str, path: str, kind: str, spec: dict[str, Any], condition: dict[str, Any]) -> Dimension:
    body, step, log = spec[kind], spec.get("step"), spec.get("log", kind == "loguniform")
    if not isinstance(body, list) or len(body) != 2 or not all(_number(v) for v in body):
        raise _fail(source, f"{key}.{kind}", "expected [low, high], two finite numbers")
    low, high = body
    if low >= high:
        raise _fail(source, f"{key}.{kind}", f"low {low} must be below high {high}")
    if kind == "loguniform" and low <= 0:
        raise _fail(source, f"{key}.loguniform", f"bounds must be > 0 for a log scale, got {low}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise _fail(source, f"{key}.int", "int bounds must be integers")
    if step is not None and (not _number(step) or step <= 0 or step > high - low or (kind == "int" and not isinstance(step, int))):
        raise _fail(source, f"{key}.step", f"step must be a {'whole ' if kind == 'int' else ''}number in (0, {high - low}]")
    if not isinstance(log, bool):
        raise _fail(source, f"{key}.log", f"expected true or false, got {log!r}")
    dim = Dimension(path=path, kind=kind, low=low, high=high, step=step, log=log, condition=condition)
    try:
        distribution(dim)
    except ValueError as exc:
        raise _fail(source, key, f"not a distribution Optuna can sample ({str(exc).splitlines()[0]})") from None
    return dim


def parse_dimension(source: str, path: str, spec: dict[str, Any], key: str | None = None) -> Dimension:
    """``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{int: [lo, hi], step: k}``,
    ``log: true`` on a range, each with an optional ``if: {other.path: value}`` condition. ``path`` is the key the
    dimension sets; ``key`` is where the file declares it (errors name it), by default the same."""
    key = key or path
    unknown = set(spec) - DIMENSION_KEYS
    if unknown:
        raise _fail(source, key, f"unknown search key {sorted(map(str, unknown))[0]!r}; use one of {', '.join(KINDS)} with optional step/log/if")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise _fail(source, key, f"a search dimension needs exactly one of {', '.join(KINDS)}")
    condition = spec.get("if", {})
    if not isinstance(condition, dict) or ("if" in spec and not condition):
        raise _fail(source, f"{key}.if", "expected a mapping {other.key.path: value}")
    if kinds[0] != "choice":
        return _range_dimension(source, key, path, kinds[0], spec, condition)
    body = spec["choice"]
    if not isinstance(body, list) or not body:
        raise _fail(source, f"{key}.choice", "expected a non-empty list of values")
    if set(spec) & {"step", "log"}:
        raise _fail(source, f"{key}.{sorted(set(spec) & {'step', 'log'})[0]}", "step and log apply to ranges, not to choice")
    if len({json.dumps(c, sort_keys=True, default=str) for c in body}) != len(body):
        raise _fail(source, f"{key}.choice", "a value is listed twice")
    return Dimension(path=path, kind="choice", choices=body, condition=condition)


def find_dimensions(source: str, raw: dict[str, Any], prefix: str = "") -> list[Dimension]:
    """Every leaf that is a mapping with a search key, in file order."""
    found = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and (set(value) & set(KINDS) or "if" in value):
            found.append(parse_dimension(source, path, value))
        elif isinstance(value, dict):
            found.extend(find_dimensions(source, value, f"{path}."))
    return found


def order_dimensions(source: str, dims: list[Dimension]) -> list[Dimension]:
    """Unconditional dimensions first; a condition may only refer to a choice dimension sampled before it."""
    ordered: list[Dimension] = []
    pending = list(dims)
    while pending:
        ready = [d for d in pending if all(p in {o.path for o in ordered} for p in d.condition)]
        if not ready:
            d = pending[0]
            missing = next(p for p in d.condition if p not in {o.path for o in ordered})
            why = "forms a cycle of conditions" if missing in {o.path for o in dims} else "is not a search dimension"
            raise _fail(source, f"{d.path}.if", f"condition on {missing!r}, which {why}")
        for d in ready:
            for path, value in d.condition.items():
                parent = next(o for o in dims if o.path == path)
                if parent.kind != "choice" or value not in parent.candidates():
                    raise _fail(source, f"{d.path}.if", f"{path} never takes the value {value!r}")
            ordered.append(d)
            pending.remove(d)
    return ordered


def suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    """Sample ``dim`` in ``trial`` (define-by-run); a choice comes back as its value, lists included."""
    dist = distribution(dim)
    if isinstance(dist, CategoricalDistribution):
        picked = trial.suggest_categorical(dim.path, dist.choices)
        return (dim.choices or [])[list(dist.choices).index(picked)]
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(dim.path, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(dim.path, dist.low, dist.high, step=dist.step, log=dist.log)


def define_by_run(trial: optuna.Trial, dimensions: list[Dimension]) -> dict[str, Any]:
    """Sample the dimensions in dependency order; a conditional one only when its condition holds.

    Returns the decoded values of non-primitive choices (Ray merges them over ``trial.params``)."""
    sampled: dict[str, Any] = {}
    for dim in dimensions:
        if dim.active(sampled):
            sampled[dim.path] = suggest(trial, dim)
    return {path: value for path, value in sampled.items() if not isinstance(value, _PRIMITIVES)}


def make_space(dimensions: list[Dimension]) -> Callable[[optuna.Trial], dict[str, Any]]:
    """A picklable define-by-run function for ``OptunaSearch(space=...)``."""
    return functools.partial(define_by_run, dimensions=dimensions)


def sample_configs(dimensions: list[Dimension], count: int, seed: int) -> list[dict[str, Any]]:
    """A few sampled parameter sets, as the sweep's TPE start-up phase would draw them (for --dry-run)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(count):
        trial = study.ask()
        decoded = define_by_run(trial, dimensions)
        out.append({**trial.params, **decoded})
        study.tell(trial, 0.0)
    return out
