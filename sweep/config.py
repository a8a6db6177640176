"""A sweep file: the run sections of ``diffusion_core.config`` in which any leaf may be a search
dimension, plus the ``sweep`` and ``tracking`` sections. Everything is validated before Ray starts."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from diffusion_core.config import SEARCH_KINDS as KINDS
from diffusion_core.config import (
    ConfigError,
    EvalConfig,
    RunConfig,
    Section,
    apply_overrides,
    error_line,
    read_yaml,
)
from diffusion_core.samplers import SAMPLING_KEYS

DIMENSION_KEYS = set(KINDS) | {"step", "log", "if"}
RUN_SECTIONS = ("data", "model", "diffusion", "train", "eval")
SAMPLING_SETTINGS = ("trials", "num_samples", "seed")
STUDY_FILE = "optuna_study.db"  # the sweep's Optuna study (SQLite), in the sweep's Ray results folder


class SchedulerConfig(Section):
    type: Literal["asha", "fifo"] = Field(default="asha", description="fifo: no pruning, every trial runs to train.max_steps (the baseline ASHA is measured against)")
    grace_period: int | None = Field(default=None, ge=1, description="training steps before the first prune decision (default: eval.every_steps)")
    reduction_factor: float = Field(default=3, gt=1)


class ResourcesConfig(Section):
    cpu: float = Field(default=1, gt=0, le=1024)
    gpu: float = Field(default=0, ge=0, le=64)


class SweepSection(Section):
    num_trials: int = Field(default=8, ge=1, le=100_000)
    max_concurrent: int = Field(default=2, ge=1, le=10_000)
    seed: int = 0
    search: Literal["tpe", "random", "grid"] = Field(
        default="tpe", description="Optuna sampler: TPE after n_startup_trials random ones, random throughout, or every combination of choice dimensions")
    n_startup_trials: int = Field(default=4, ge=1, description="random trials before TPE takes over")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources_per_trial: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage_path: str = Field(default_factory=lambda: os.environ.get("DIFFUSION_SWEEP_STORAGE", "~/ray_results"))
    max_failures: int = Field(default=2, ge=0, description="retries of a failed trial from its last checkpoint")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="configurations ({dimension path: value}) evaluated first, in order")
    study_storage: str | None = Field(default=None, description="Optuna storage URL of the study (default: SQLite beside the Ray results)")


class FinalSection(Section):
    """``final``: the sweep's best configuration trained to the full budget by ``python -m sweep.finalize``."""

    steps: int | None = Field(default=None, ge=1, description="training steps (default: train.max_steps)")
    every_steps: int | None = Field(default=None, ge=1, description="steps between evaluations (default: eval.every_steps)")
    num_samples: int | None = Field(default=None, ge=2, description="samples per FID/KID evaluation (default: eval.num_samples)")
    workers: int = Field(default=1, ge=1, le=1024, description="data-parallel workers (DDP)")
    resources_per_worker: ResourcesConfig | None = Field(default=None, description="default: sweep.resources_per_trial, whole GPUs")


class TrackingSection(Section):
    tracking_uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    experiment: str | None = None


class Dimension(Section):
    """One search dimension at ``path``; ``condition`` maps other dimensions' paths to required values."""

    path: str
    kind: Literal["choice", "uniform", "loguniform", "int"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    condition: dict[str, Any] = Field(default_factory=dict)

    def candidates(self) -> list[Any]:
        """Values that together exercise the whole range: the choices, or both bounds."""
        if self.kind == "choice":
            return list(self.choices or [])
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(sampled.get(path) == value for path, value in self.condition.items())


class SamplingSearch(Section):
    """``eval.search``: sampling-time dimensions, searched on a trained checkpoint by a small Optuna study
    at a trial's final rung (or by ``python -m sweep.tune_sampling``), never by training another model."""

    trials: int = Field(default=8, ge=1, le=1000, description="sampling configurations tried per checkpoint")
    num_samples: int | None = Field(default=None, ge=2, description="samples per configuration (default: eval.num_samples)")
    seed: int = 0
    dimensions: list[Dimension] = Field(default_factory=list)


class SweepConfig(Section):
    name: str
    output_dir: str = "runs"
    data: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    diffusion: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    sweep: SweepSection = Field(default_factory=SweepSection)
    final: FinalSection = Field(default_factory=FinalSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    dimensions: list[Dimension] = Field(default_factory=list, exclude=True)
    sampling_search: SamplingSearch | None = Field(default=None, exclude=True)
    source: str = Field(default="<sweep>", exclude=True)

    @model_validator(mode="after")
    def _name_is_a_path_segment(self) -> SweepConfig:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError("name must be a non-empty file-name-like string (no '/')")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def grace_period(self) -> int:
        """ASHA's first rung in training steps: ``sweep.scheduler.grace_period``, else ``eval.every_steps``."""
        return self.sweep.scheduler.grace_period or self.run_config({}).eval.every_steps

    @property
    def study_storage(self) -> str:
        """The Optuna storage URL of the sweep's study (``optuna-dashboard URL`` opens it): ``sweep.study_storage``,
        else a SQLite file in the sweep's Ray results folder (under ``output_dir`` when those are remote)."""
        if self.sweep.study_storage:
            return self.sweep.study_storage
        root = self.output_dir if "://" in self.sweep.storage_path else self.sweep.storage_path
        return f"sqlite:///{Path(root).expanduser().resolve() / self.name / STUDY_FILE}"

    def base_raw(self) -> dict[str, Any]:
        """The run sections with every dimension replaced by its first candidate."""
        raw = {"name": self.name, "output_dir": self.output_dir, **{s: copy.deepcopy(getattr(self, s)) for s in RUN_SECTIONS}}
        raw["eval"].pop("search", None)
        for dim in self.dimensions:
            set_path(raw, dim.path, dim.candidates()[0])
        return raw

    def run_config(self, params: dict[str, Any]) -> RunConfig:
        """The concrete RunConfig of one trial from its sampled ``{path: value}`` parameters."""
        raw = self.base_raw()
        for path, value in params.items():
            set_path(raw, path, value)
        try:
            return RunConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(error_line(self.source, exc)) from None


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        raw = raw[part]
    raw[leaf] = value


def _fail(source: str, path: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {message}")


def parse_dimension(source: str, path: str, spec: dict[str, Any]) -> Dimension:
    """``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{int: [lo, hi], step: k}``,
    each with an optional ``if: {other.path: value}`` condition."""
    unknown = set(spec) - DIMENSION_KEYS
    if unknown:
        raise _fail(source, path, f"unknown search key {sorted(unknown)[0]!r}; use one of {', '.join(KINDS)} with optional step/if")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise _fail(source, path, f"a search dimension needs exactly one of {', '.join(KINDS)}")
    kind, body = kinds[0], spec[kinds[0]]
    condition = spec.get("if", {})
    if not isinstance(condition, dict) or ("if" in spec and not condition):
        raise _fail(source, f"{path}.if", "expected a mapping {other.key.path: value}")
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise _fail(source, f"{path}.choice", "expected a non-empty list of values")
        if "step" in spec:
            raise _fail(source, f"{path}.step", "step applies to int/uniform ranges, not to choice")
        return Dimension(path=path, kind=kind, choices=body, condition=condition)
    if not isinstance(body, list) or len(body) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in body):
        raise _fail(source, f"{path}.{kind}", "expected [low, high] numbers")
    low, high = body
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _fail(source, f"{path}.{kind}", f"low {low} must be below high {high}")
    if kind == "loguniform" and low <= 0:
        raise _fail(source, f"{path}.loguniform", f"bounds must be > 0 for a log scale, got {low}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise _fail(source, f"{path}.int", "int bounds must be integers")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0 or step > high - low):
        raise _fail(source, f"{path}.step", f"step must be a number in (0, {high - low}]")
    return Dimension(path=path, kind=kind, low=low, high=high, step=step, log=kind == "loguniform" or bool(spec.get("log")), condition=condition)


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


def _order_dimensions(source: str, dims: list[Dimension]) -> list[Dimension]:
    """Unconditional dimensions first; a condition may only refer to a choice dimension sampled before it."""
    ordered: list[Dimension] = []
    pending = list(dims)
    while pending:
        ready = [d for d in pending if all(p in {o.path for o in ordered} for p in d.condition)]
        if not ready:
            d = pending[0]
            missing = next(p for p in d.condition if p not in {o.path for o in ordered})
            known = {o.path for o in dims}
            why = "forms a cycle of conditions" if missing in known else "is not a search dimension"
            raise _fail(source, f"{d.path}.if", f"condition on {missing!r}, which {why}")
        for d in ready:
            for path, value in d.condition.items():
                parent = next(o for o in dims if o.path == path)
                if parent.kind != "choice" or value not in parent.candidates():
                    raise _fail(source, f"{d.path}.if", f"{path} never takes the value {value!r}")
            ordered.append(d)
            pending.remove(d)
    return ordered


def parse_sampling_search(source: str, spec: Any, training_dims: list[Dimension]) -> SamplingSearch:
    """``eval.search``: settings (trials, num_samples, seed) and sampling dimensions keyed like ``eval``'s own keys;
    a condition names another sampling dimension by its full path, e.g. ``if: {eval.sampler: ddim}``."""
    if not isinstance(spec, dict):
        raise _fail(source, "eval.search", f"expected a mapping of sampling dimensions, got {type(spec).__name__}")
    settings = {k: v for k, v in spec.items() if k in SAMPLING_SETTINGS}
    dims = []
    for key, value in spec.items():
        if key in SAMPLING_SETTINGS:
            continue
        if key not in SAMPLING_KEYS:
            raise _fail(source, f"eval.search.{key}", f"unknown key; sampling dimensions are {', '.join(SAMPLING_KEYS)} "
                        f"and settings {', '.join(SAMPLING_SETTINGS)}")
        if not (isinstance(value, dict) and set(value) & set(KINDS)):
            raise _fail(source, f"eval.search.{key}", f"expected a search dimension such as {{choice: [...]}}; a fixed value belongs in eval.{key}")
        if any(d.path == f"eval.{key}" for d in training_dims):
            raise _fail(source, f"eval.search.{key}", f"eval.{key} is already a training dimension; declare it in one place only")
        dims.append(parse_dimension(source, f"eval.{key}", value))
    if not dims:
        raise _fail(source, "eval.search", f"declares no sampling dimension; add one of {', '.join(SAMPLING_KEYS)}")
    try:
        return SamplingSearch.model_validate({**settings, "dimensions": _order_dimensions(source, dims)})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(source, "eval.search." + ".".join(str(p) for p in first["loc"]), first["msg"]) from None


def _check_every_candidate(cfg: SweepConfig) -> None:
    """Validate the run config with each candidate of each dimension, so a bad value fails now, not in trial 37."""
    base = cfg.base_raw()
    _validate_run(cfg.source, base, None)
    for dim in cfg.dimensions:
        for value in dim.candidates():
            raw = copy.deepcopy(base)
            for path, required in dim.condition.items():
                set_path(raw, path, required)
            set_path(raw, dim.path, value)
            _validate_run(cfg.source, raw, (dim, value))
    search = cfg.sampling_search
    for dim in search.dimensions if search else []:
        for value in dim.candidates():
            raw = copy.deepcopy(base)
            raw["eval"]["num_samples"] = search.num_samples or raw["eval"].get("num_samples", EvalConfig().num_samples)
            for path, required in dim.condition.items():
                set_path(raw, path, required)
            set_path(raw, dim.path, value)
            _validate_run(cfg.source, raw, (dim, value))


def _validate_run(source: str, raw: dict[str, Any], probe: tuple[Dimension, Any] | None) -> None:
    try:
        RunConfig.model_validate(raw)
    except ValidationError as exc:
        line = error_line(source, exc)
        if probe:
            dim, value = probe
            line += f" (when {dim.path} = {value!r}, one of its search values)"
        raise ConfigError(line) from None


def parse_sweep(raw: dict[str, Any], source: str | Path = "<sweep>") -> SweepConfig:
    source = str(source)
    for section in RUN_SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            raise _fail(source, section, f"expected a mapping, got {type(raw[section]).__name__}")
    sections = {s: raw.get(s, {}) for s in RUN_SECTIONS}
    sections["eval"] = {k: v for k, v in sections["eval"].items() if k != "search"}
    dims = _order_dimensions(source, find_dimensions(source, sections))
    search = parse_sampling_search(source, raw["eval"]["search"], dims) if "search" in raw.get("eval", {}) else None
    try:
        cfg = SweepConfig.model_validate({**raw, "dimensions": dims, "sampling_search": search, "source": source})
    except ValidationError as exc:
        raise ConfigError(error_line(source, exc)) from None
    _check_every_candidate(cfg)
    _check_grid(cfg)
    _check_enqueue(cfg)
    return cfg


def enqueued_value_error(dim: Dimension, value: Any) -> str | None:
    """Why ``value`` is not one the dimension can take (None when it is)."""
    if dim.kind == "choice":
        return None if value in (dim.choices or []) else f"{value!r} is not one of {dim.choices}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{value!r} is not a number"
    if dim.kind == "int" and not isinstance(value, int):
        return f"{value!r} is not an integer"
    if not dim.low <= value <= dim.high:
        return f"{value!r} is outside [{dim.low:g}, {dim.high:g}]"
    if dim.step and not math.isclose((value - dim.low) / dim.step, round((value - dim.low) / dim.step), abs_tol=1e-9):
        return f"{value!r} is not on the step {dim.step:g} from {dim.low:g}"
    return None


def _check_enqueue(cfg: SweepConfig) -> None:
    """``sweep.enqueue``: each configuration names dimensions by path, with values they can take (a conditional one
    only where its condition holds), and makes a valid run, so that the searcher evaluates it as written."""
    if cfg.sweep.enqueue and cfg.sweep.search == "grid":
        raise _fail(cfg.source, "sweep.enqueue", "grid search runs every combination once; drop enqueue or use search: tpe")
    dims = {d.path: d for d in cfg.dimensions}
    for i, point in enumerate(cfg.sweep.enqueue):
        where = f"sweep.enqueue[{i}]"
        raw = cfg.base_raw()
        for path, value in point.items():
            dim = dims.get(path)
            if dim is None:
                raise _fail(cfg.source, f"{where}.{path}", f"not a search dimension; the dimensions are {', '.join(dims) or 'none'}")
            error = enqueued_value_error(dim, value)
            if error:
                raise _fail(cfg.source, f"{where}.{path}", error)
            if not dim.active(point):
                raise _fail(cfg.source, f"{where}.{path}", f"sampled only if {dim.condition}; add that to this configuration or drop the key")
            set_path(raw, path, value)
        try:
            RunConfig.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{error_line(cfg.source, exc)} (in {where})") from None


def _check_grid(cfg: SweepConfig) -> None:
    """``sweep.search: grid`` runs every combination once: only unconditional choices, and one trial per cell."""
    if cfg.sweep.search != "grid":
        return
    for dim in cfg.dimensions:
        if dim.kind != "choice" or dim.condition:
            why = "has a condition" if dim.condition else f"is a {dim.kind} range"
            raise _fail(cfg.source, dim.path, f"{why}, but sweep.search: grid needs unconditional {{choice: [...]}} dimensions only")
    if not cfg.dimensions:
        raise _fail(cfg.source, "sweep.search", "grid search needs at least one {choice: [...]} dimension")
    cells = math.prod(len(d.choices or []) for d in cfg.dimensions)
    if cfg.sweep.num_trials != cells:
        raise _fail(cfg.source, "sweep.num_trials", f"{cfg.sweep.num_trials} trials for a grid of {cells} configurations; "
                    f"set num_trials: {cells} to run each once")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    return parse_sweep(apply_overrides(read_yaml(path), overrides or [], source=f"{path} (--set)"), path)
