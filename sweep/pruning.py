"""Noise-aware asynchronous successive halving: Ray's ASHA, except that a trial whose rung FID is tied with the
promotion cutoff within its own measured noise goes on to the next rung instead of being stopped.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020) stops a trial at a rung when its
FID is worse than the (1 - 1/eta) quantile of the FIDs recorded at that rung so far. A rung FID on a few dozen
samples carries sampling noise of a few percent, so a trial whose FID lies within that noise of the cutoff is cut
on a coin flip. Here it is stopped only when FID > cutoff + z * sigma, sigma the trial's own FID standard deviation
at that rung (``fid_std``, a bootstrap over its samples: ``diffusion_core.fid_bootstrap``); its real FID is what
the rung records, so later cutoffs are unchanged. A result without a finite noise estimate is judged as by ASHA.
"""
from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket


class NoiseAwareBracket(_Bracket):
    """An ASHA bracket whose stop rule leaves a tolerance of ``z`` noise standard deviations (in reward units)."""

    def __init__(self, *args: Any, z: float, noise: dict[str, float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._z, self._noise = z, noise  # noise: trial id -> sigma of its latest result (shared with the scheduler)

    def on_result(self, trial: Any, cur_iter: int, cur_rew: float | None) -> str:
        """Ray's rule (record the reward at the first milestone it passes; stop below the cutoff), with the cutoff
        lowered by the trial's tolerance for the decision only."""
        for milestone, recorded in self._rungs:
            if cur_iter >= milestone and trial.trial_id in recorded and not self._stop_last_trials:
                break
            if cur_iter < milestone or trial.trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            stop = cutoff is not None and cur_rew is not None and cur_rew < cutoff - self._z * self._noise.get(trial.trial_id, 0.0)
            if cur_rew is not None:
                recorded[trial.trial_id] = cur_rew
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE


class NoiseAwareASHA(ASHAScheduler):
    """``ASHAScheduler`` with ``NoiseAwareBracket``s: ties with the cutoff within ``z`` standard deviations of the
    trial's metric (``noise_metric`` in its result) are promoted."""

    def __init__(self, *, noise_metric: str, z: float = 1.0, grace_period: int = 1, max_t: int = 100,
                 reduction_factor: float = 4, brackets: int = 1, stop_last_trials: bool = True, **kwargs: Any) -> None:
        super().__init__(grace_period=grace_period, max_t=max_t, reduction_factor=reduction_factor, brackets=brackets,
                         stop_last_trials=stop_last_trials, **kwargs)
        self._noise_metric = noise_metric
        self._latest_noise: dict[str, float] = {}
        self._brackets = [NoiseAwareBracket(grace_period, max_t, reduction_factor, s, stop_last_trials=stop_last_trials,
                                            z=z, noise=self._latest_noise) for s in range(brackets)]

    def _note_noise(self, trial: Any, result: dict) -> None:
        sigma = result.get(self._noise_metric)
        finite = isinstance(sigma, int | float) and math.isfinite(sigma) and sigma >= 0
        self._latest_noise[trial.trial_id] = float(sigma) if finite else 0.0

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._note_noise(trial, result)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._note_noise(trial, result)
        super().on_trial_complete(tune_controller, trial, result)
        self._latest_noise.pop(trial.trial_id, None)
