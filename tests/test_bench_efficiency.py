"""The efficiency benchmark's code at a tiny size: tables, the replay's clock and accounting, the strategies driven
through their libraries' callbacks, the figures, the real-run comparison and the rendered section (on synthetic
tables: a few seconds). Building a real table trains; that one test is marked slow."""
import json
import math
import subprocess
import sys

import pytest

from bench._efficiency_stats import anytime, curve_band, oracle_steps, rank_fidelity, spread, time_to, winners_cut
from bench._efficiency_table import EMA_PATH, Table, build, config_key, grid, problem_space, trained_values
from bench._replay import Report, Trace, replay
from bench._replay_check import own_table, read_trials, replayed_decisions
from bench._strategies import STRATEGIES, Settings
from bench.bench_efficiency import BENCHMARK

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def synthetic_fid(config: dict, step: int) -> float:
    """A made-up learning curve: lr and T set the final FID; every curve falls with training."""
    quality = {3.0e-4: 3.0, 1.0e-3: 1.0, 3.0e-3: 2.0}[config["train.lr"]] * (1.5 if config["diffusion.timesteps"] == 100 else 1.0)
    quality *= 1.2 if config["diffusion.schedule"] == "linear" else 1.0
    quality *= 1.0 if config[EMA_PATH] == 0.99 else 1.1
    return 20.0 * quality + 400.0 / step


def write_table(path, problem="digits", drop=None, max_steps=600):
    """A table of the digits problem's grid with ``synthetic_fid`` curves; ``drop``: configurations left out."""
    space = problem_space(problem)
    space["train"]["max_steps"] = max_steps
    rows = []
    for config in grid(trained_values(space)):
        if drop and drop(config):
            continue
        for step in range(100, max_steps + 1, 100):
            fid = synthetic_fid(config, step)
            rows.append({"params": config, "step": step, "fid": fid, "fid_std": 0.02 * fid, "kid": fid / 1000,
                         "kid_std": 0.001, "train_seconds": 1.0 + config["diffusion.timesteps"] / 400, "eval_seconds": 2.0})
    path.write_text(json.dumps({"problem": problem, "space": space, "rows": rows, "build": {"seconds": 1.0}}))
    return path


@pytest.fixture
def table(tmp_path):
    return Table.read(write_table(tmp_path / "digits.json"))


def settings_of(table, workers=2):
    return Settings(table.space, workers, grace=100, reduction_factor=3, startup=4)


def test_a_table_is_its_grid_and_a_cut_build_keeps_the_trained_sub_grid(tmp_path, table):
    assert len(table.records) == 24 and table.max_steps == 600 and table.every_steps == 100
    cut = Table.read(write_table(tmp_path / "cut.json", drop=lambda c: c["diffusion.schedule"] == "cosine"))
    assert len(cut.records) == 12 and cut.space["diffusion"]["schedule"] == {"choice": ["linear"]}
    with pytest.raises(ValueError, match="1 configurations of the grid missing"):
        Table.read(write_table(tmp_path / "hole.json", drop=lambda c: c == grid(trained_values(table.space))[5]))
    with pytest.raises(KeyError, match="no configuration"):
        table.rungs({"train.lr": 0.5})


def test_config_keys_do_not_depend_on_int_or_float_or_order():
    assert config_key({"b": 100, "a": "x"}) == config_key({"a": "x", "b": 100.0})


def test_full_budget_random_search_runs_whole_trials_two_at_a_time_within_the_budget(table):
    strategy = STRATEGIES["random"][1](settings_of(table), 0)
    trace = replay(table, strategy, workers=2, budget_steps=6 * 600, max_trials=6)
    assert len(trace.configs) == 6 and set(trace.stopped_at.values()) == {600}
    assert trace.reports[-1].trial_steps == 3600 and len(trace.reports) == 36
    assert [r.seconds for r in trace.reports] == sorted(r.seconds for r in trace.reports)
    # two slots: at any report, at most two trials have started and not yet finished
    for report in trace.reports:
        started = {r.trial_id for r in trace.reports if r.seconds <= report.seconds}
        done = {r.trial_id for r in trace.reports if r.seconds < report.seconds and r.step == 600}
        assert len(started - done) <= 2


def test_replay_clock_adds_each_rungs_train_and_eval_seconds(table):
    trace = replay(table, STRATEGIES["tpe"][1](settings_of(table, workers=1), 3), workers=1, budget_steps=600)
    per_rung = [r.seconds for r in trace.reports]
    rung = table.rungs(json.loads(trace.configs["trial_0000"]))[0]
    assert per_rung == pytest.approx([(k + 1) * (rung["train_seconds"] + rung["eval_seconds"]) for k in range(6)])


@pytest.mark.parametrize("name", ["asha_tpe", "noise_asha_tpe", "optuna_hyperband", "optuna_sha", "bohb"])
def test_pruning_strategies_stop_trials_early_and_spend_the_budget_on_more_trials(table, name):
    strategy = STRATEGIES[name][1](settings_of(table), 0)
    trace = replay(table, strategy, workers=2, budget_steps=12 * 600)
    stopped = [s for s in trace.stopped_at.values() if s < 600]
    assert stopped and len(trace.configs) > 12
    assert sorted(trace.stopped_at[t] for t, _ in strategy.stops) == sorted(stopped)
    assert trace.reports[-1].trial_steps >= 12 * 600


@pytest.mark.parametrize("name", ["asha_tpe", "bohb"])
def test_a_replay_is_a_function_of_its_seed(table, name):
    def run(seed):
        trace = replay(table, STRATEGIES[name][1](settings_of(table), seed), 2, 12 * 600)
        return [(r.config, r.step) for r in trace.reports]
    assert run(1) == run(1) and run(1) != run(2)


def test_bohb_pauses_trials_at_its_bracket_budget_and_resumes_the_best(table):
    trace = replay(table, STRATEGIES["bohb"][1](settings_of(table), 0), 2, 12 * 600)
    first = trace.reports[0].trial_id
    times = [r.seconds for r in trace.reports if r.trial_id == first]
    gaps = [b - a for a, b in zip(times, times[1:])]
    rung = table.rungs(json.loads(trace.configs[first]))[1]
    assert max(gaps) > rung["train_seconds"] + rung["eval_seconds"] + 1e-9  # it waited, paused, between two rungs
    assert any(s == 600 for s in trace.stopped_at.values()) and any(s < 600 for s in trace.stopped_at.values())


def test_noise_aware_asha_stops_no_more_than_plain_asha_here(table):
    # FID noise of 2% keeps near-ties going; on this table plain ASHA stops at least as many trials per trial started
    plain = STRATEGIES["asha_tpe"][1](settings_of(table), 0)
    noisy = STRATEGIES["noise_asha_tpe_z2"][1](settings_of(table), 0)
    replay(table, plain, 2, 12 * 600, max_trials=20)
    replay(table, noisy, 2, 12 * 600, max_trials=20)
    assert len(noisy.stops) <= len(plain.stops)


def trace_of(points):
    """A hand-written trace: (trial-steps, fid) per report, one second apart."""
    return Trace(reports=[Report(float(i), steps, f"t{i}", "c", 100, fid) for i, (steps, fid) in enumerate(points)])


def test_time_to_target_anytime_curve_and_spread():
    trace = trace_of([(100, 90.0), (200, 50.0), (300, 70.0), (400, 40.0)])
    assert time_to(trace, 55.0) == {"trial_steps": 200, "seconds": 1.0, "fid": 50.0}
    assert time_to(trace, 10.0) is None
    assert anytime(trace, [50, 100, 250, 400]) == [None, 90.0, 50.0, 40.0]
    assert spread([1.0, 3.0, None]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "min": 1.0, "max": 3.0, "missing": 1}
    band = curve_band([[None, 4.0, 2.0], [None, 6.0, 1.0]])
    assert band == {"mean": [None, 5.0, 1.5], "min": [None, 4.0, 1.0], "max": [None, 6.0, 2.0]}


def test_rank_fidelity_of_a_table_whose_rungs_rank_as_the_end_is_one(table):
    assert list(rank_fidelity(table).values()) == pytest.approx([1.0] * 5)
    assert sorted(rank_fidelity(table)) == [100, 200, 300, 400, 500]
    assert rank_fidelity(table, list(table.records)[:2]) == {100: None, 200: None, 300: None, 400: None, 500: None}


def test_the_oracle_trains_only_the_first_configuration_to_reach_the_target(table):
    finals = sorted(rows[-1]["fid"] for rows in table.records.values())
    assert oracle_steps(table, finals[0]) == 600  # only the best configuration gets there, at its last rung
    assert oracle_steps(table, 1e9) == 100


def test_winners_cut_counts_stopped_trials_that_would_have_reached_the_target(table):
    configs = {"a": list(table.records)[0], "b": list(table.records)[1]}
    finals = {t: table.records[c][-1]["fid"] for t, c in configs.items()}
    target = min(finals.values()) + 1e-9
    assert winners_cut(table, [("a", 100), ("b", 100)], configs, target) == {"stopped": 2, "would_have_reached_target": 1}


def write_result_file(experiment, trial_id, number, config, rows):
    folder = experiment / f"run_trial_{trial_id}_{number}_lr=0.0010_2026-12-02_08-16-06"  # Tune's trial folder name
    folder.mkdir(parents=True)
    lines = [json.dumps({"trial_id": trial_id, "config": config, "training_iteration": i + 1, **row})
             for i, row in enumerate(rows)]
    (folder / "result.json").write_text("\n".join(lines) + "\n")


def test_a_real_run_is_read_back_and_a_replay_of_it_matches_its_decisions(tmp_path, table):
    # a "real" run that decided exactly as the replay does: the replay of its own rows must match it
    strategy = STRATEGIES["asha_tpe"][1](settings_of(table), 0)
    trace = replay(table, strategy, 2, 6 * 600, max_trials=6)
    for n, (trial_id, key) in enumerate(trace.configs.items()):
        rows = [r for r in table.records[key] if r["step"] <= trace.stopped_at[trial_id]]
        total = 0.0
        lines = []
        for r in rows:
            total += r["train_seconds"] + r["eval_seconds"]
            lines.append({k: r[k] for k in ("step", "fid", "fid_std", "kid", "kid_std")} | {"time_total_s": total})
        write_result_file(tmp_path, f"{9 - n:08x}", n + 1, json.loads(key), lines)  # ids do not sort as created
    real = read_trials(tmp_path)
    assert [t["config"] for t in real] == list(trace.configs.values())
    decisions = replayed_decisions(own_table(table, real), real, settings_of(table), seed=0)
    assert decisions["match"] and decisions["real_stops"]
    assert replayed_decisions(table, real, settings_of(table), seed=0)["match"]  # over the whole table too
    other = replayed_decisions(table, real, settings_of(table), seed=5)  # another seed proposes other configurations
    assert not other["match"]


def run_benchmark(tmp_path, *extra):
    write_table(tmp_path / "digits.json")
    out, plot = tmp_path / "efficiency.json", tmp_path / "efficiency.png"
    cmd = [sys.executable, "-m", "bench.bench_efficiency", "--tables", str(tmp_path), "--problems", "digits", "--seeds", "2",
           "--random-trials", "4", "--out", str(out), "--plot", str(plot), *extra]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.read_text()), plot


def test_the_benchmark_writes_its_json_plot_and_section(tmp_path):
    result, plot = run_benchmark(tmp_path)
    problem = result["problems"]["digits"]
    assert plot.stat().st_size > 10_000 and result["plot"] == "efficiency.png"
    assert set(problem["strategies"]) == set(STRATEGIES) and len(problem["seeds"]) == 2
    random = problem["strategies"]["random"]
    assert random["steps_ratio"]["mean"] == 1.0 and random["trials"]["mean"] == 4
    assert random["curve"]["mean"][-1] == pytest.approx(random["best_fid"]["mean"])
    for seed in problem["seeds"]:
        assert seed["target"] == pytest.approx(seed["strategies"]["random"]["best_fid"] * 1.05)
        assert 0 < seed["oracle_ratio"] <= min(s["steps_ratio"] for s in seed["strategies"].values() if s["steps_ratio"])
    text = "\n".join(BENCHMARK.section(result))
    assert "time to the same target" in text and "Spearman" in text and "noise-aware" in text
    assert "efficiency.png" in text
    summary = BENCHMARK.summary(result)
    assert summary.startswith("| sweep efficiency (time to the same target, mean of 2 seeds)")
    key = config_key({"diffusion.schedule": "cosine", "diffusion.timesteps": 100, "train.lr": 0.001, EMA_PATH: 0.99})
    result["real_check"] = {"trials": 6, "seed": 0, "wall_seconds": None, "reused": True,
                            "table_agreement": {"rungs": 10, "of_rungs": 10, "max_relative_difference": 0.0,
                                                "mean_relative_difference": 0.0},
                            "decisions": {"real": [[key, 100]], "replayed": [[key, 100]], "match": True}}
    result["tune_checks"] = [{"problem": "digits", "strategy": "bohb", "seed": 1, "trials": 2, "scale": 0.3,
                              "decisions": {"real": [[key, 100], [key, 300]], "replayed": [[key, 300], [key, 300]],
                                            "real_stops": [[0, 100]], "match": False}}]
    text = "\n".join(BENCHMARK.section(result))
    assert "proposes and stops **the same** trials" in text and "| 0 | cosine, 100, 0.99, 0.001 | 100 |" in text
    assert "| digits | `bohb` | 1 | 2 | **no**: 2 of 2 proposals the same, 1 of them stopped at another rung | 1 |" in text


@pytest.mark.slow
def test_a_real_table_is_built_by_the_trainer_and_evaluator(tmp_path, monkeypatch):
    import bench._efficiency_table as tables

    tiny = tables.merge(tables._COMMON, {"train": {"max_steps": 20, "lr": {"choice": [1.0e-3]}},
                                         "diffusion": {"schedule": {"choice": ["cosine"]}, "timesteps": {"choice": [100]}},
                                         "eval": {"every_steps": 10, "num_samples": 8, "batch_size": 8, "sampling_steps": 4,
                                                  "reference_images": 32, "kid_subset_size": 4}})
    monkeypatch.setattr(tables, "_COMMON", tiny)
    out = tmp_path / "digits.json"
    build("digits", out, None, str(tmp_path / "fid"))
    table = Table.read(out)
    assert len(table.records) == 2 and table.build["trainings"] == 1
    rows = next(iter(table.records.values()))
    assert [r["step"] for r in rows] == [10, 20]
    assert all(r["fid"] > 0 and r["fid_std"] > 0 and r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in rows)
    build("digits", out, None, str(tmp_path / "fid"))  # resumes: nothing left to train
    assert Table.read(out).build["trainings"] == 1


@pytest.mark.slow
def test_under_tunes_own_controller_table_backed_trials_run_the_replayed_proposals(tmp_path):
    from bench._tune_check import tune_check

    path = write_table(tmp_path / "digits.json", max_steps=300)
    result = tune_check(path, "asha_tpe", 0, trials=4, workers=2, scale=0.2, storage=tmp_path / "tune")
    decisions = result["decisions"]
    # four trials are TPE's four random start-up draws: the same whatever order results come in
    assert [c for c, _ in decisions["real"]] == [c for c, _ in decisions["replayed"]]
    assert all(step in (100, 300) for _, step in decisions["real"])
    assert not result["reused"] and tune_check(path, "asha_tpe", 0, 4, 2, 0.2, tmp_path / "tune")["reused"]
