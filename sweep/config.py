"""A sweep file: the run sections of ``diffusion_core.config`` in which any leaf may be a search dimension, plus
the ``sweep`` and ``tracking`` sections.

Everything is validated before Ray starts, as the run will use it: every dimension is built as Optuna's
distribution, and the run config is validated for every combination of the values the dimensions can draw
(``Dimension.probes``: every choice, every drawable int of a short range, the ends of the others), the sampling
study's dimensions included, so a file that validates never fails in trial 37 for a reason validation could see.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from diffusion_core.config import (
    ConfigError,
    EvalConfig,
    Name,
    PathText,
    RunConfig,
    Section,
    Seed,
    apply_overrides,
    error_line,
    read_yaml,
    set_value,
)
from diffusion_core.samplers import SAMPLING_KEYS
from sweep.space import Dimension, find_dimensions, order_dimensions, parse_dimension
from sweep.uris import redact

RUN_SECTIONS = ("data", "model", "diffusion", "train", "eval")
SAMPLING_SETTINGS = ("trials", "num_samples", "seed")
FIXED_KEYS = {"train.max_steps": "it is ASHA's max_t", "eval.every_steps": "it sets the rungs every trial reports at"}
MAX_COMBINATIONS = 20_000  # beyond it, every combination of up to three dimensions (the others at their first value)
STUDY_FILE = "optuna_study.db"  # the sweep's Optuna study (SQLite), in the sweep's Ray results folder


class SchedulerConfig(Section):
    type: Literal["asha", "fifo"] = Field(default="asha", description="fifo: no pruning, every trial runs to train.max_steps (the baseline ASHA is measured against)")
    grace_period: int | None = Field(default=None, ge=1, description="training steps before the first prune decision (default: eval.every_steps)")
    reduction_factor: float = Field(default=3, gt=1, le=100)
    noise_aware: bool = Field(default=False, description="asha: a trial whose rung FID is within noise_z of its own FID "
                              "standard deviation (fid_std) of the promotion cutoff goes on instead of being stopped "
                              "(off by default: the efficiency benchmark measured no gain)")
    noise_z: float = Field(default=1.0, gt=0, description="noise_aware: the tie band, in standard deviations of the rung FID")


class ResourcesConfig(Section):
    cpu: float = Field(default=1, gt=0, le=1024)
    gpu: float = Field(default=0, ge=0, le=64)


class ThroughputConfig(Section):
    """One trial's speed on the cluster's device, for ``--dry-run``'s estimate (else it is measured here)."""

    train_steps_per_second: float = Field(gt=0, description="training steps per second of one trial at train.batch_size")
    samples_per_second: float = Field(gt=0, description="evaluated samples per second: sampling at eval.sampling_steps plus Inception features")
    measured_on: str = Field(default="configured", description="where the numbers were measured, printed beside the estimate")


class SweepSection(Section):
    num_trials: int = Field(default=8, ge=1, le=100_000)
    max_concurrent: int = Field(default=2, ge=1, le=10_000)
    seed: Seed = 0
    search: Literal["tpe", "random", "grid"] = Field(
        default="tpe", description="Optuna sampler: TPE after n_startup_trials random ones, random throughout, or every combination of choice dimensions")
    n_startup_trials: int = Field(default=4, ge=1, le=100_000, description="random trials before TPE takes over")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources_per_trial: ResourcesConfig = Field(default_factory=ResourcesConfig)
    storage_path: PathText = Field(default_factory=lambda: os.environ.get("DIFFUSION_SWEEP_STORAGE", "~/ray_results"))
    max_failures: int = Field(default=2, ge=0, le=100, description="retries of a failed trial from its last checkpoint")
    throughput: ThroughputConfig | None = Field(default=None, description="one trial's speed for --dry-run's estimate (default: measured here)")
    cluster_config: PathText = Field(default="cluster/gpu.yaml", description="Ray cluster launcher config whose node types --dry-run places trials on")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="configurations ({dimension path: value}) evaluated first, in order")
    study_storage: PathText | None = Field(default=None, description="Optuna storage URL of the study (default: SQLite beside the Ray results)")


class FinalSection(Section):
    """``final``: the sweep's best configuration trained to the full budget by ``python -m sweep.finalize``."""

    steps: int | None = Field(default=None, ge=1, description="training steps (default: train.max_steps)")
    every_steps: int | None = Field(default=None, ge=1, description="steps between evaluations (default: eval.every_steps)")
    num_samples: int | None = Field(default=None, ge=2, description="samples per FID/KID evaluation (default: eval.num_samples)")
    workers: int = Field(default=1, ge=1, le=1024, description="data-parallel workers (DDP)")
    resources_per_worker: ResourcesConfig | None = Field(default=None, description="default: sweep.resources_per_trial, whole GPUs")


class TrackingSection(Section):
    tracking_uri: PathText = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    experiment: Name | None = None


class SamplingSearch(Section):
    """``eval.search``: sampling-time dimensions, searched on a trained checkpoint by a small Optuna study
    at a trial's final rung (or by ``python -m sweep.tune_sampling``), never by training another model."""

    trials: int = Field(default=8, ge=1, le=1000, description="sampling configurations tried per checkpoint")
    num_samples: int | None = Field(default=None, ge=2, le=1_000_000, description="samples per configuration (default: eval.num_samples)")
    seed: Seed = 0
    dimensions: list[Dimension] = Field(default_factory=list)


class SweepConfig(Section):
    name: Name
    output_dir: PathText = "runs"
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

    def resolved(self) -> dict[str, Any]:
        """The file as the driver resolved it, as it is stored (beside the Ray results, on the parent run):
        credentials in the tracking URI redacted."""
        out = self.model_dump(mode="json")
        out["tracking"]["tracking_uri"] = redact(out["tracking"]["tracking_uri"])
        return out

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def grace_period(self) -> int:
        """ASHA's first rung in training steps: ``sweep.scheduler.grace_period``, else the first evaluation."""
        base = self.run_config({})
        return self.sweep.scheduler.grace_period or min(base.eval.every_steps, base.train.max_steps)

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
        if not (isinstance(value, dict) and set(value) & {"choice", "uniform", "loguniform", "int"}):
            raise _fail(source, f"eval.search.{key}", f"expected a search dimension such as {{choice: [...]}}; a fixed value belongs in eval.{key}")
        if any(d.path == f"eval.{key}" for d in training_dims):
            raise _fail(source, f"eval.search.{key}", f"eval.{key} is already a training dimension; declare it in one place only")
        dims.append(parse_dimension(source, f"eval.{key}", value, f"eval.search.{key}"))
    if not dims:
        raise _fail(source, "eval.search", f"declares no sampling dimension; add one of {', '.join(SAMPLING_KEYS)}")
    try:
        return SamplingSearch.model_validate({**settings, "dimensions": order_dimensions(source, dims)})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(source, "eval.search." + ".".join(str(p) for p in first["loc"]), first["msg"]) from None


def _assignments(dims: list[Dimension], fixed: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the dimensions' probes that their conditions allow (an inactive one keeps ``fixed``'s value)."""
    if not dims:
        yield {}
        return
    first, rest = dims[0], dims[1:]
    for chosen in ({first.path: v} for v in first.probes()) if first.active(fixed) else [{}]:
        for tail in _assignments(rest, {**fixed, **chosen}):
            yield {**chosen, **tail}


def _combinations(dims: list[Dimension]) -> Iterator[dict[str, Any]]:
    """All combinations when there are at most ``MAX_COMBINATIONS``, else those of every set of up to three
    dimensions (with the choice parents their conditions need)."""
    if math.prod(len(d.probes()) for d in dims) <= MAX_COMBINATIONS:
        yield from _assignments(dims, {})
        return
    by_path = {d.path: d for d in dims}
    for size in (1, 2, 3):
        for subset in itertools.combinations(dims, size):
            parents = {p for d in subset for p in d.condition if by_path[p] not in subset}
            yield from _assignments([by_path[p] for p in parents] + list(subset), {})


def _validate(cfg: SweepConfig, base: dict[str, Any], combination: dict[str, Any]) -> str | None:
    raw = copy.deepcopy(base)
    for path, value in combination.items():
        set_path(raw, path, value)
    try:
        RunConfig.model_validate(raw)
    except ValidationError as exc:
        return error_line(cfg.source, exc)
    return None


def _culprits(cfg: SweepConfig, start: dict[str, Any], dims: list[Dimension], combination: dict[str, Any]) -> dict[str, Any]:
    """The part of a failing combination that makes it fail: the values without which it passes, and the values
    their conditions need (the whole combination when that part alone passes)."""
    needed = {p for p in combination if not _validate(cfg, start, {k: v for k, v in combination.items() if k != p})}
    needed |= {parent for d in dims if d.path in needed for parent in d.condition}
    culprit = {p: v for p, v in combination.items() if p in needed}
    return culprit if _validate(cfg, start, culprit) else combination


def _check_space(cfg: SweepConfig) -> None:
    """Validate the run config for every combination the sweep can draw; the first failing one is reduced to the
    dimensions that make it fail and named in the error."""
    base = cfg.base_raw()
    if error := _validate(cfg, base, {}):
        raise ConfigError(error)
    study = cfg.sampling_search
    passes = [(cfg.dimensions, base)]
    if study:
        study_base = copy.deepcopy(base)
        study_base["eval"]["num_samples"] = study.num_samples or base["eval"].get("num_samples", EvalConfig().num_samples)
        passes.append((cfg.dimensions + study.dimensions, study_base))
    for dims, start in passes:
        for combination in _combinations(dims):
            if error := _validate(cfg, start, combination):
                shown = _culprits(cfg, start, dims, combination)
                when = ", ".join(f"{p} = {v!r}" for p, v in shown.items())
                raise ConfigError(f"{error} (when {when}: a combination the sweep can draw)" if when else error)


def _check_sweep_section(cfg: SweepConfig) -> None:
    """Settings Ray and Optuna would only reject after the sweep started."""
    for dim in cfg.dimensions:
        if dim.path in FIXED_KEYS:
            raise _fail(cfg.source, dim.path, f"cannot be a search dimension: {FIXED_KEYS[dim.path]}")
    base = cfg.run_config({})
    grace = cfg.grace_period
    if cfg.sweep.scheduler.type == "asha" and grace > base.train.max_steps:
        raise _fail(cfg.source, "sweep.scheduler.grace_period", f"{grace} steps is beyond train.max_steps {base.train.max_steps}; "
                    "the first rung must come before the end")
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



def parse_sweep(raw: dict[str, Any], source: str | Path = "<sweep>") -> SweepConfig:
    source = str(source)
    for section in RUN_SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            raise _fail(source, section, f"expected a mapping, got {type(raw[section]).__name__}")
    sections = {s: raw.get(s, {}) for s in RUN_SECTIONS}
    sections["eval"] = {k: v for k, v in sections["eval"].items() if k != "search"}
    dims = order_dimensions(source, find_dimensions(source, sections))
    search = parse_sampling_search(source, raw["eval"]["search"], dims) if "search" in raw.get("eval", {}) else None
    try:
        cfg = SweepConfig.model_validate({**raw, "dimensions": dims, "sampling_search": search, "source": source})
    except ValidationError as exc:
        raise ConfigError(error_line(source, exc)) from None
    _check_space(cfg)
    _check_sweep_section(cfg)
    _check_enqueue(cfg)
    return cfg


def load_sweep(path: str | Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> SweepConfig:
    """The sweep file at ``path`` with ``--set`` ``overrides`` (YAML text) and ``values`` (key path -> value) applied."""
    raw = apply_overrides(read_yaml(path), overrides or [], source=f"{path} (--set)")
    for key, value in (values or {}).items():
        set_value(raw, key, value, path)
    return parse_sweep(raw, path)
