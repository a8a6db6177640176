"""Sampling-time search on a trained network: a small Optuna study over ``eval.search``'s dimensions
(sampler, steps, DDIM eta, guidance weight, thresholding), each configuration scored by FID/KID on the
same budget of samples drawn from the same initial noises (common random numbers).

Only forward passes of the given network run here: no optimizer exists, nothing is retrained. The run's
own sampling settings are scored first on the same budget, so the reported best is never worse than them.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from diffusion_core.config import RunConfig
from diffusion_core.evaluate import Evaluator
from diffusion_core.metrics import InceptionFeatures
from diffusion_core.samplers import SAMPLING_KEYS
from diffusion_core.schedules import NoiseSchedule
from sweep.config import SamplingSearch
from sweep.space import categorical_label, define_by_run


@dataclass
class SamplingTrial:
    params: dict[str, Any]  # {"eval.<key>": value}; empty for the run's own settings
    fid: float
    kid: float
    seconds: float


@dataclass
class SamplingStudyResult:
    default: SamplingTrial
    trials: list[SamplingTrial]
    num_samples: int

    @property
    def best(self) -> SamplingTrial:
        return min([self.default, *self.trials], key=lambda t: t.fid)

    def best_settings(self, cfg: RunConfig) -> dict[str, Any]:
        """The complete sampling settings of the best configuration, as ``eval.<key>: value``."""
        chosen = study_config(cfg, self.num_samples, self.best.params).eval
        return {f"eval.{key}": getattr(chosen, key) for key in SAMPLING_KEYS}

    def metrics(self) -> dict[str, float]:
        return {"sampling_default_fid": self.default.fid, "sampling_best_fid": self.best.fid,
                "sampling_study_seconds": self.default.seconds + sum(t.seconds for t in self.trials)}

    def table(self) -> dict[str, list[Any]]:
        """Columns for ``MlflowClient.log_table``: one row per configuration, the run's own settings first."""
        keys = sorted({k for t in self.trials for k in t.params})
        rows = [("default", self.default), *((str(i), t) for i, t in enumerate(self.trials))]
        return {
            "configuration": [name for name, _ in rows],
            **{key: [t.params.get(key, "") for _, t in rows] for key in keys},
            "fid": [t.fid for _, t in rows],
            "kid": [t.kid for _, t in rows],
            "seconds": [t.seconds for _, t in rows],
        }


def study_config(cfg: RunConfig, num_samples: int, params: dict[str, Any]) -> RunConfig:
    """The run config with the study's sample budget and one configuration's sampling settings."""
    update = {"num_samples": num_samples, **{path.removeprefix("eval."): value for path, value in params.items()}}
    return RunConfig.model_validate({**cfg.model_dump(), "eval": {**cfg.eval.model_dump(), **update}})


def choice_grid(search: SamplingSearch) -> dict[str, list[Any]] | None:
    """The whole grid when every sampling dimension is an unconditional choice, else None."""
    if any(d.kind != "choice" or d.condition for d in search.dimensions):
        return None
    return {d.path: [categorical_label(c) for c in d.choices or []] for d in search.dimensions}


def run_sampling_study(model: nn.Module, schedule: NoiseSchedule, cfg: RunConfig, search: SamplingSearch,
                       features: InceptionFeatures, device: torch.device | str = "cpu",
                       on_trial: Callable[[SamplingTrial], None] | None = None) -> SamplingStudyResult:
    """Score the run's own settings, then ``search.trials`` configurations proposed by seeded TPE, or the
    whole grid when the dimensions are choices with at most ``search.trials`` combinations; ``on_trial``
    sees each scored configuration as it finishes (progress)."""
    num_samples = search.num_samples or cfg.eval.num_samples

    default_eval = study_config(cfg, num_samples, {}).eval

    def score(params: dict[str, Any]) -> SamplingTrial:
        start = time.perf_counter()
        trial_cfg = study_config(cfg, num_samples, params)
        if params and trial_cfg.eval == default_eval:  # the configured settings again: same samples, same score
            return SamplingTrial(params, default.fid, default.kid, 0.0)
        result = Evaluator(trial_cfg, device, features)(model, schedule)
        scored = SamplingTrial(params, result.fid, result.kid, time.perf_counter() - start)
        if on_trial is not None:
            on_trial(scored)
        return scored

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = choice_grid(search)
    cells = math.prod(len(values) for values in grid.values()) if grid is not None else None
    if cells is not None and cells <= search.trials:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(grid, seed=search.seed)
        count = cells
    else:
        sampler, count = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(4, search.trials)), search.trials
    study = optuna.create_study(direction="minimize", sampler=sampler)
    default = score({})
    trials: list[SamplingTrial] = []

    def objective(trial: optuna.Trial) -> float:
        decoded = define_by_run(trial, search.dimensions)
        trials.append(score({**trial.params, **decoded}))
        return trials[-1].fid

    study.optimize(objective, n_trials=count)  # GridSampler stops the study itself once the grid is done
    return SamplingStudyResult(default, trials, num_samples)


def describe(result: SamplingStudyResult, cfg: RunConfig) -> str:
    """One line for logs and the CLI: default vs best FID and the best settings."""
    settings = json.dumps({k.removeprefix("eval."): v for k, v in result.best_settings(cfg).items()})
    return (f"sampling study ({len(result.trials)} configurations, {result.num_samples} samples each): "
            f"default FID {result.default.fid:.2f} -> best {result.best.fid:.2f} with {settings}")
