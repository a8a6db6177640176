"""What Optuna learns from an ASHA-stopped trial, through the installed Ray's OptunaSearch."""
import optuna
import pytest
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


def test_sweep_search_and_scheduler_pick_the_optuna_sampler_and_the_tune_scheduler():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweep.runner import make_sampler, make_scheduler

    raw = {"name": "t", "train": {"lr": {"loguniform": [1e-4, 1e-2]}, "max_steps": 900}, "eval": {"every_steps": 100}}
    default = parse_sweep(raw)
    assert isinstance(make_sampler(default), optuna.samplers.TPESampler)
    asha = make_scheduler(default, default.run_config({}))
    assert isinstance(asha, ASHAScheduler)
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [100, 300, 900]  # grace = eval.every_steps, rf 3

    baseline = parse_sweep({**raw, "sweep": {"search": "random", "scheduler": {"type": "fifo"}, "seed": 3}})
    random_sampler = make_sampler(baseline)
    assert isinstance(random_sampler, optuna.samplers.RandomSampler)
    assert type(make_scheduler(baseline, baseline.run_config({}))) is FIFOScheduler
    drawn = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(baseline))
        drawn.append([study.ask().suggest_float("lr", 1e-4, 1e-2, log=True) for _ in range(3)])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3  # seeded by sweep.seed, and not constant


def test_unknown_search_or_scheduler_is_a_one_line_config_error():
    from diffusion_core.config import ConfigError

    for sweep in ({"search": "bayes"}, {"scheduler": {"type": "hyperband"}}):
        with pytest.raises(ConfigError, match="sweep"):
            parse_sweep({"name": "t", "sweep": sweep})


GRID_RAW = {"name": "t", "model": {"channel_mult": {"choice": [[1, 2], [1, 2, 2]]}, "dropout": {"choice": [0.0, 0.1]}},
            "train": {"lr": {"choice": [1e-4, 3e-4]}, "max_steps": 300}, "sweep": {"search": "grid", "num_trials": 8}}


def test_grid_search_runs_every_combination_once_through_ray_optuna_search():
    from sweep.runner import make_sampler

    cfg = parse_sweep(GRID_RAW)
    searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric="fid", mode="min", max_step=300,
                                     sampler=make_sampler(cfg))
    limiter = ConcurrencyLimiter(searcher, 4)
    seen = []
    for wave in range(2):  # four at a time: running cells are not handed out twice
        ids = [f"t{wave}{i}" for i in range(4)]
        configs = [limiter.suggest(trial_id) for trial_id in ids]
        for trial_id in ids:
            limiter.on_trial_complete(trial_id, {"fid": 50.0, "step": 300, "training_iteration": 1})
        seen += [(tuple(c["model.channel_mult"]), c["model.dropout"], c["train.lr"]) for c in configs]
    assert len(set(seen)) == 8  # the whole 2 x 2 x 2 grid, each cell once
    assert {cell[0] for cell in seen} == {(1, 2), (1, 2, 2)}  # list choices decoded back from their labels


@pytest.mark.parametrize("change, key", [
    ({"train": {"lr": {"loguniform": [1e-4, 3e-4]}, "max_steps": 300}}, "train.lr"),
    ({"sweep": {"search": "grid", "num_trials": 5}}, "sweep.num_trials"),
])
def test_grid_search_needs_choices_and_one_trial_per_cell(change, key):
    from diffusion_core.config import ConfigError

    with pytest.raises(ConfigError, match=rf"{key}: .*(grid|set num_trials: 8)"):
        parse_sweep({**GRID_RAW, **change})
