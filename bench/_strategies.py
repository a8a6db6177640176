"""The strategies the efficiency benchmark replays, each driven through its library's own public interface:

- the sweep's own (``sweep.runner``: ``RungAwareOptunaSearch`` in a ``ConcurrencyLimiter``, and ``make_scheduler``'s
  ASHA or noise-aware ASHA), through Ray Tune's searcher and scheduler callbacks exactly as Tune's controller calls
  them (``suggest``; ``on_trial_result`` to the scheduler, then to the searcher unless the trial stops;
  ``on_trial_complete`` to both) -- without a Ray cluster;
- Optuna alone (random search or TPE at the full budget, TPE with Optuna's ``HyperbandPruner`` or
  ``SuccessiveHalvingPruner``), through ``ask`` / ``report`` / ``should_prune`` / ``tell``;
- Ray's BOHB (``bench._bohb``).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from sweep.config import SweepConfig, parse_sweep
from sweep.runner import METRIC, MODE, RungAwareOptunaSearch, make_sampler, make_scheduler
from sweep.space import define_by_run, make_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Settings:
    """What every strategy shares: the sweep space, its concurrency, ASHA's rungs and the TPE start-up."""

    space: dict[str, Any]  # a sweep file without its ``sweep`` section
    workers: int
    grace: int
    reduction_factor: float
    startup: int

    def sweep_config(self, seed: int, search: str, scheduler: dict[str, Any]) -> SweepConfig:
        space = copy.deepcopy(self.space)
        space["sweep"] = {"seed": seed, "search": search, "n_startup_trials": self.startup, "max_concurrent": self.workers,
                          "scheduler": {"grace_period": self.grace, "reduction_factor": self.reduction_factor, **scheduler}}
        return parse_sweep(space, "<efficiency>")


class RaySweep:
    """The sweep's searcher and scheduler, built by ``sweep.runner`` from a sweep config, called as Tune calls them."""

    def __init__(self, cfg: SweepConfig) -> None:
        base = cfg.run_config({})
        searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric=METRIC, mode=MODE,
                                         max_step=base.train.max_steps, sampler=make_sampler(cfg))
        self.searcher = ConcurrencyLimiter(searcher, cfg.sweep.max_concurrent)
        self.scheduler = make_scheduler(cfg, base)
        self.max_steps = base.train.max_steps
        self.trials: dict[str, SimpleNamespace] = {}
        self.stops: list[tuple[str, int]] = []  # (trial id, step) of every stop before max_steps

    def start(self, trial_id: str | None) -> dict[str, Any] | None:
        if trial_id is None:
            return None
        config = self.searcher.suggest(trial_id)
        if config is None:
            return None
        self.trials[trial_id] = SimpleNamespace(trial_id=trial_id)
        self.scheduler.on_trial_add(None, self.trials[trial_id])
        return config

    def result(self, trial_id: str, result: dict[str, Any]) -> str:
        decision = self.scheduler.on_trial_result(None, self.trials[trial_id], result)
        if decision == TrialScheduler.STOP:
            if result["step"] < self.max_steps:
                self.stops.append((trial_id, result["step"]))
            return decision
        self.searcher.on_trial_result(trial_id, result)
        return decision

    def released(self) -> list[str]:
        return []

    def finish(self, trial_id: str, result: dict[str, Any]) -> None:
        self.scheduler.on_trial_complete(None, self.trials[trial_id], result)
        self.searcher.on_trial_complete(trial_id, result=result)


class OptunaAlone:
    """An Optuna study asked and told directly: its sampler proposes, its pruner (if any) stops; a stopped trial is
    told as PRUNED (as ``raise optuna.TrialPruned`` in an objective would), a finished one with its final FID."""

    def __init__(self, cfg: SweepConfig, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> None:
        self.dimensions = cfg.dimensions
        self.max_steps = cfg.run_config({}).train.max_steps
        # a fixed name: HyperbandPruner assigns brackets by a hash of the study name and trial number
        self.study = optuna.create_study(study_name="efficiency", direction="minimize", sampler=sampler, pruner=pruner)
        self.trials: dict[str, optuna.Trial] = {}
        self.pruned: set[str] = set()
        self.stops: list[tuple[str, int]] = []

    def start(self, trial_id: str | None) -> dict[str, Any] | None:
        if trial_id is None:
            return None
        trial = self.study.ask()
        decoded = define_by_run(trial, self.dimensions)
        self.trials[trial_id] = trial
        return {**trial.params, **decoded}

    def result(self, trial_id: str, result: dict[str, Any]) -> str:
        """``report`` then ``should_prune``, as an objective's training loop does after every rung (the last too)."""
        trial = self.trials[trial_id]
        trial.report(result["fid"], result["step"])
        if not trial.should_prune():
            return TrialScheduler.CONTINUE
        self.pruned.add(trial_id)
        if result["step"] < self.max_steps:
            self.stops.append((trial_id, result["step"]))
        return TrialScheduler.STOP

    def released(self) -> list[str]:
        return []

    def finish(self, trial_id: str, result: dict[str, Any]) -> None:
        trial = self.trials[trial_id]
        if trial_id in self.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, result["fid"])


def _ray(noise: dict[str, Any]) -> Callable[[Settings, int], RaySweep]:
    def build(settings: Settings, seed: int) -> RaySweep:
        np.random.seed(seed)  # Ray's ASHA draws each trial's bracket from numpy's global generator
        return RaySweep(settings.sweep_config(seed, "tpe", {"type": "asha", **noise}))
    return build


def _optuna(search: str, pruner: Callable[[Settings], optuna.pruners.BasePruner]) -> Callable[[Settings, int], OptunaAlone]:
    def build(settings: Settings, seed: int) -> OptunaAlone:
        cfg = settings.sweep_config(seed, search, {"type": "fifo"})
        return OptunaAlone(cfg, make_sampler(cfg), pruner(settings))
    return build


def _bohb(settings: Settings, seed: int) -> Any:
    from bench._bohb import RayBOHB  # hpbandster and ConfigSpace: needed by this strategy only

    np.random.seed(seed)
    return RayBOHB(settings.sweep_config(seed, "tpe", {"type": "asha"}), seed, settings.workers)


def _max_steps(settings: Settings) -> int:
    return int(settings.space["train"]["max_steps"])


# name -> (what it is, how to build it for a seed); "random" is the baseline every ratio divides by.
STRATEGIES: dict[str, tuple[str, Callable[[Settings, int], Any]]] = {
    "random": ("random search, every trial to the full budget (Optuna RandomSampler)",
               _optuna("random", lambda s: optuna.pruners.NopPruner())),
    "tpe": ("TPE, every trial to the full budget (Optuna TPESampler)", _optuna("tpe", lambda s: optuna.pruners.NopPruner())),
    "asha_tpe": ("ours: ASHA + TPE (sweep.runner: Ray's ASHAScheduler, RungAwareOptunaSearch)", _ray({})),
    "noise_asha_tpe": ("ours, noise-aware: ASHA that promotes ties within 1 sigma of the rung FID (sweep.pruning)",
                       _ray({"noise_aware": True, "noise_z": 1.0})),
    "noise_asha_tpe_z2": ("ours, noise-aware with a 2-sigma tie band", _ray({"noise_aware": True, "noise_z": 2.0})),
    "optuna_hyperband": ("Optuna alone: TPE + HyperbandPruner",
                         _optuna("tpe", lambda s: optuna.pruners.HyperbandPruner(
                             min_resource=s.grace, max_resource=_max_steps(s), reduction_factor=int(s.reduction_factor)))),
    "optuna_sha": ("Optuna alone: TPE + SuccessiveHalvingPruner",
                   _optuna("tpe", lambda s: optuna.pruners.SuccessiveHalvingPruner(
                       min_resource=s.grace, reduction_factor=int(s.reduction_factor)))),
    "bohb": ("Ray's BOHB: TuneBOHB + HyperBandForBOHB (synchronous; paused trials resume)", _bohb),
}
