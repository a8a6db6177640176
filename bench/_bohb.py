"""Ray's BOHB (Falkner et al. 2018: ``TuneBOHB`` proposing, ``HyperBandForBOHB`` deciding) in the replay.

HyperBand is synchronous: a trial that reaches its bracket's budget is paused until the bracket's other trials get
there, then the best 1/eta go on and the others stop. The scheduler drives that through Tune's controller -- it
reads trial statuses, stops paused trials (``stop_trial``), picks the trial to run next (``choose_trial_to_run``)
and tells the searcher of pauses -- so this module stands in for the parts of the controller it calls, with
Tune's own semantics (``TuneController.stop_trial``: a paused trial is removed from the scheduler and completed at
the searcher without a result; a running one is completed at both with its last result). The controller's
budget is ``training_iteration`` (one per rung), so HyperBand's brackets fall on the table's rungs.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import ConfigSpace as CS
from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandForBOHB, TrialScheduler
from ray.tune.search.bohb import TuneBOHB

from bench._replay import Resume
from sweep.config import SweepConfig
from sweep.runner import METRIC, MODE
from sweep.space import categorical_label


class _Trial:
    """The fields of Tune's ``Trial`` that HyperBand reads (hashed by identity, as Tune's trials are)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id, self.status, self.is_saving = trial_id, Trial.PENDING, False
        self.last_result: dict[str, Any] = {}


class _Controller:
    """The calls HyperBandForBOHB makes on Tune's controller."""

    def __init__(self, owner: RayBOHB) -> None:
        self.owner = owner
        self.search_alg = SimpleNamespace(searcher=owner.searcher)

    def get_trials(self) -> list[_Trial]:
        return list(self.owner.trials.values())

    def stop_trial(self, trial: _Trial) -> None:
        """``TuneController.stop_trial``."""
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.owner.scheduler.on_trial_remove(self, trial)
            self.owner.searcher.on_trial_complete(trial.trial_id)
            if trial.status == Trial.PAUSED and trial.trial_id not in self.owner.at_max:
                self.owner.ended.append(trial.trial_id)
        elif trial.status == Trial.RUNNING:
            self.owner.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.owner.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        trial.status = Trial.TERMINATED


def config_space(cfg: SweepConfig, seed: int) -> CS.ConfigurationSpace:
    """The sweep's ``choice`` dimensions as a ConfigSpace (the tables' spaces have no other kind)."""
    space = CS.ConfigurationSpace(seed=seed)
    for dim in cfg.dimensions:
        if dim.kind != "choice" or dim.condition:
            raise ValueError(f"{dim.path}: the BOHB replay takes unconditional choice dimensions only")
        space.add(CS.CategoricalHyperparameter(dim.path, [categorical_label(c) for c in dim.choices or []]))
    return space


class RayBOHB:
    """``TuneBOHB`` + ``HyperBandForBOHB`` over the sweep's space, with rungs as HyperBand's iterations."""

    def __init__(self, cfg: SweepConfig, seed: int, workers: int) -> None:
        base = cfg.run_config({})
        self.max_steps = base.train.max_steps
        self.searcher = TuneBOHB(space=config_space(cfg, seed), metric=METRIC, mode=MODE, seed=seed)
        self.searcher.set_max_concurrency(workers)  # as Tune does with TuneConfig(max_concurrent_trials=...)
        rungs = -(-base.train.max_steps // base.eval.every_steps)
        self.scheduler = HyperBandForBOHB(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=rungs,
                                          reduction_factor=cfg.sweep.scheduler.reduction_factor)
        self.controller = _Controller(self)
        self.trials: dict[str, _Trial] = {}
        self.ended: list[str] = []  # paused trials stopped by the scheduler, for the replay to release
        self.at_max: set[str] = set()  # trials paused at their last rung
        self.stops: list[tuple[str, int]] = []

    def start(self, trial_id: str | None) -> dict[str, Any] | Resume | None:
        chosen = self.scheduler.choose_trial_to_run(self.controller)
        while chosen is not None and chosen.trial_id in self.at_max:
            # paused at its last rung: resumed, it has nothing left to train and completes with its last result
            self.at_max.discard(chosen.trial_id)
            chosen.status = Trial.RUNNING
            self.controller.stop_trial(chosen)
            chosen = self.scheduler.choose_trial_to_run(self.controller)
        if chosen is not None:
            chosen.status = Trial.RUNNING
            return Resume(chosen.trial_id)
        if trial_id is None:
            return None
        config = self.searcher.suggest(trial_id)
        if config is None:
            return None
        trial = self.trials[trial_id] = _Trial(trial_id)
        self.scheduler.on_trial_add(self.controller, trial)
        if self.scheduler.choose_trial_to_run(self.controller) is not trial:
            raise RuntimeError(f"HyperBand did not pick the trial just added ({trial_id})")
        trial.status = Trial.RUNNING
        return {path: value.item() if hasattr(value, "item") else value for path, value in config.items()}

    def result(self, trial_id: str, result: dict[str, Any]) -> str:
        trial = self.trials[trial_id]
        result = dict(result)
        decision = self.scheduler.on_trial_result(self.controller, trial, result)
        trial.last_result = result
        if decision == TrialScheduler.STOP:
            if result["step"] < self.max_steps:
                self.stops.append((trial_id, result["step"]))
            return decision
        self.searcher.on_trial_result(trial_id, result)
        if decision == TrialScheduler.PAUSE:
            trial.status = Trial.PAUSED
        return decision

    def finish(self, trial_id: str, result: dict[str, Any]) -> None:
        """A trial's last rung: completed if running; one paused at its last rung stays paused at the scheduler (as in
        Tune, until HyperBand resumes or stops it), with nothing left to train."""
        trial = self.trials[trial_id]
        if trial.status == Trial.PAUSED:
            self.at_max.add(trial_id)
        elif trial.status == Trial.RUNNING:
            self.controller.stop_trial(trial)

    def released(self) -> list[str]:
        ended, self.ended = self.ended, []
        for trial_id in ended:
            self.stops.append((trial_id, self.trials[trial_id].last_result["step"]))
        return ended
