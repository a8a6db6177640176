"""A persistent, seedable study: `sweep.enqueue` validated like the rest of the space and evaluated first, the
Optuna study in an RDB storage that `optuna.load_study` (and so optuna-dashboard) opens, trial runs named by
what they are, and the MLflow link that lands on the sweep's runs."""
from __future__ import annotations

import re

import optuna
import pytest
from helpers import sweep_runs
from optuna.trial import TrialState

from diffusion_core.config import ConfigError
from sweep.config import STUDY_FILE, SweepConfig, parse_sweep
from sweep.preflight import PreflightError, check_study
from sweep.runner import RungAwareOptunaSearch, enqueued_points, study_storage
from sweep.space import make_space
from sweep.tracking import runs_page
from sweep.trainable import trial_label, trial_run_name

SPACE = {
    "name": "seeded",
    "model": {"base_channels": {"choice": [16, 32]}, "num_heads": {"choice": [1, 16]}, "channel_mult": {"choice": [[1, 2], [1, 1]]}},
    "diffusion": {"schedule": {"choice": ["linear", "cosine"]}, "cosine_s": {"uniform": [0.004, 0.016], "if": {"diffusion.schedule": "cosine"}}},
    "train": {"lr": {"loguniform": [1e-4, 1e-2]}, "warmup_steps": {"int": [0, 100], "step": 10}},
}
DDPM = {"train.lr": 2e-4, "diffusion.schedule": "linear", "model.channel_mult": [1, 2]}


def seeded(*points: dict, **sweep) -> SweepConfig:
    return parse_sweep({**SPACE, "sweep": {"enqueue": list(points), **sweep}}, "seeded.yaml")


@pytest.mark.parametrize("point, expected", [
    ({"train.lrr": 1e-3}, "seeded.yaml: sweep.enqueue[0].train.lrr: not a search dimension; the dimensions are model.base_channels"),
    ({"train.lr": 0.5}, "seeded.yaml: sweep.enqueue[0].train.lr: 0.5 is outside [0.0001, 0.01]"),
    ({"train.lr": "fast"}, "seeded.yaml: sweep.enqueue[0].train.lr: 'fast' is not a number"),
    ({"train.warmup_steps": 15}, "seeded.yaml: sweep.enqueue[0].train.warmup_steps: 15 is not on the step 10 from 0"),
    ({"train.warmup_steps": 10.0}, "seeded.yaml: sweep.enqueue[0].train.warmup_steps: 10.0 is not an integer"),
    ({"diffusion.schedule": "sigmoid"}, "seeded.yaml: sweep.enqueue[0].diffusion.schedule: 'sigmoid' is not one of ['linear', 'cosine']"),
    ({"diffusion.cosine_s": 0.008}, "seeded.yaml: sweep.enqueue[0].diffusion.cosine_s: sampled only if {'diffusion.schedule': 'cosine'}"),
])
def test_a_bad_enqueued_configuration_is_one_line_naming_it_and_its_key(point, expected):
    with pytest.raises(ConfigError) as error:
        seeded(point, DDPM)
    assert str(error.value).startswith(expected)


def test_enqueue_is_refused_with_a_grid_search():
    raw = {"name": "g", "diffusion": {"schedule": {"choice": ["linear", "cosine"]}},
           "sweep": {"search": "grid", "num_trials": 2, "enqueue": [{"diffusion.schedule": "linear"}]}}
    with pytest.raises(ConfigError, match="sweep.enqueue: grid search runs every combination once"):
        parse_sweep(raw, "g.yaml")


def test_enqueued_configurations_are_evaluated_first_and_the_study_is_stored(tmp_path):
    """The searcher suggests each enqueued configuration as written (the rest of the space sampled), then samples;
    optuna.load_study opens the study from its stored URL with every trial in it."""
    cosine = {"diffusion.schedule": "cosine", "diffusion.cosine_s": 0.01, "train.lr": 1e-3}
    cfg = seeded(DDPM, cosine, storage_path=str(tmp_path / "ray_results"))
    assert cfg.study_storage == f"sqlite:///{tmp_path / 'ray_results' / 'seeded' / STUDY_FILE}"
    searcher = RungAwareOptunaSearch(space=make_space(cfg.dimensions), metric="fid", mode="min", max_step=300,
                                     sampler=optuna.samplers.TPESampler(seed=0), points_to_evaluate=enqueued_points(cfg),
                                     storage=study_storage(cfg), study_name=cfg.name)
    first, second, third = (searcher.suggest(t) for t in ("a", "b", "c"))
    assert {k: first[k] for k in DDPM} == DDPM and "diffusion.cosine_s" not in first
    assert {k: second[k] for k in cosine} == cosine
    assert set(third) >= {"train.lr", "diffusion.schedule", "model.num_heads"}
    searcher.on_trial_complete("a", {"fid": 50.0, "step": 300, "training_iteration": 3})

    stored = optuna.load_study(study_name="seeded", storage=cfg.study_storage)
    trials = stored.get_trials()
    assert len(trials) == 3 and trials[0].state == TrialState.COMPLETE and trials[0].value == 50.0
    assert trials[0].params["model.channel_mult"] == "[1, 2]" and trials[1].params["diffusion.cosine_s"] == 0.01


def test_a_new_sweep_refuses_a_stored_study_of_its_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    cfg = seeded(DDPM, study_storage=url)
    check_study(cfg, resume=False)  # no study yet
    optuna.create_study(study_name="seeded", storage=url)
    check_study(cfg, resume=True)
    with pytest.raises(PreflightError, match=f"name: an Optuna study 'seeded' already exists in {re.escape(url)}; pass --resume"):
        check_study(cfg, resume=False)


def test_trial_runs_are_named_by_number_and_sampled_values():
    folder = "/r/smoke/run_trial_38d6764f_4_diffusion_schedule=cosine,model_dropout=0.1635_2026-12-02_08-35-54"
    assert trial_label("run_trial_38d6764f", folder) == "trial 4"
    assert trial_label("run_trial_38d6764f", "/r/smoke/elsewhere") == "run_trial_38d6764f"
    name = trial_run_name("trial 4", {"train.lr": 0.00123456, "diffusion.schedule": "cosine",
                                      "model.channel_mult": [1, 2], "train.seed": 3, "eval.seed": 4})
    assert name == "trial 4: lr=0.00123 schedule=cosine channel_mult=[1, 2] train.seed=3 eval.seed=4"
    assert trial_run_name("trial 4", {}) == "trial 4"
    assert len(trial_run_name("trial 1", {f"a.k{i}": "x" * 20 for i in range(40)})) == 250


def test_the_mlflow_link_opens_the_model_training_runs_page(tmp_path):
    suffix = "/#/experiments/7/runs?workflowType=machine_learning"
    assert runs_page(f"sqlite:///{tmp_path / 'm.db'}", "7") == "http://127.0.0.1:5000" + suffix
    assert runs_page("http://localhost:5001/", "7") == "http://localhost:5001" + suffix


@pytest.mark.slow
def test_the_smoke_sweep_stores_its_study_names_its_runs_and_links_its_runs_page(smoke_sweep):
    work, output = smoke_sweep
    client, (parent,), children = sweep_runs(work, "smoke")
    study = optuna.load_study(study_name=parent.data.tags["optuna_study"], storage=parent.data.tags["optuna_storage"])
    trials = study.get_trials()
    assert len(trials) == len(children) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED} and TrialState.PRUNED in {t.state for t in trials}
    assert f"optuna-dashboard {parent.data.tags['optuna_storage']}" in output
    numbers = set()
    for child in children:
        name = child.data.tags["mlflow.runName"]
        match = re.fullmatch(r"trial (\d+): (.+)", name)
        assert match and {v.split("=")[0] for v in match[2].split()} == {p.rsplit(".", 1)[-1] for p in child.data.params}, name
        numbers.add(int(match[1]))
    assert numbers == set(range(1, 7))
    assert f"#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in output
