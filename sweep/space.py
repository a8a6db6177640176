"""Search dimensions → an Optuna define-by-run function (conditional dimensions are plain branches)."""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.config import Dimension

_PRIMITIVES = (str, int, float, bool, type(None))


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
