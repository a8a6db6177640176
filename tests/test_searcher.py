"""What Optuna learns from an ASHA-stopped trial, through the installed Ray's OptunaSearch."""
import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter

from sweep.config import parse_sweep
from sweep.runner import RungAwareOptunaSearch
from sweep.space import make_space


def make_searcher(max_step=300):
    cfg = parse_sweep({"name": "t", "model": {"dropout": {"uniform": [0.0, 0.3]}}, "train": {"lr": {"loguniform": [1e-4, 1e-2]}}})
    searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric="fid", mode="min", max_step=max_step,
                                     sampler=optuna.samplers.TPESampler(seed=0))
    return ConcurrencyLimiter(searcher, 4), searcher


def test_stopped_trial_is_told_as_pruned_with_its_rung_values_and_finished_one_as_complete():
    limiter, searcher = make_searcher()
    for trial_id in ("a", "b", "c"):
        config = limiter.suggest(trial_id)
        assert set(config) == {"model.dropout", "train.lr"}
    limiter.on_trial_result("a", {"fid": 80.0, "step": 100, "training_iteration": 1})
    limiter.on_trial_complete("a", {"fid": 80.0, "step": 100, "training_iteration": 1})
    for it, (fid, step) in enumerate([(70.0, 100), (50.0, 200), (40.0, 300)], start=1):
        limiter.on_trial_result("b", {"fid": fid, "step": step, "training_iteration": it})
    limiter.on_trial_complete("b", {"fid": 40.0, "step": 300, "training_iteration": 3})
    limiter.on_trial_complete("c", None, error=True)

    trials = {t.number: t for t in searcher._ot_study.get_trials(deepcopy=False)}
    a, b, c = trials[0], trials[1], trials[2]
    assert a.state == TrialState.PRUNED and a.intermediate_values == {1: 80.0}
    assert b.state == TrialState.COMPLETE and b.value == 40.0 and b.intermediate_values == {1: 70.0, 2: 50.0, 3: 40.0}
    assert c.state == TrialState.FAIL


def test_plain_ray_optuna_search_would_have_told_the_early_fid_as_final():
    """The behaviour we override: documents why RungAwareOptunaSearch exists (fails if Ray changes it)."""
    from ray.tune.search.optuna import OptunaSearch

    cfg = parse_sweep({"name": "t", "model": {"dropout": {"uniform": [0.0, 0.3]}}})
    plain = OptunaSearch(space=make_space(cfg.dimensions), metric="fid", mode="min")
    plain.suggest("a")
    plain.on_trial_result("a", {"fid": 80.0, "step": 100, "training_iteration": 1})
    plain.on_trial_complete("a", {"fid": 80.0, "step": 100, "training_iteration": 1})
    (trial,) = plain._ot_study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE and trial.value == 80.0
