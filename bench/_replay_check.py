"""Does the replay decide as a real sweep does? One real ``python -m sweep.launch`` sweep (ASHA + TPE) of a table's
space, then two comparisons:

1. the table against the real trials: each real rung FID beside the table's FID of the same configuration and step
   (the table was trained by the same Trainer and Evaluator, so they differ only by run-to-run numerical noise);
2. the replay against the real decisions: the sweep's strategy replayed, with the same seed and concurrency, over
   the real run's own rung results and rung durations; the configurations it proposes, in order, and where it stops
   each trial, beside the real run's.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from bench._efficiency_table import Table, config_key
from bench._replay import replay
from bench._strategies import STRATEGIES, Settings
from bench._sweeps import run_space


def check_space(table: Table, args: argparse.Namespace, trials: int, seed: int) -> dict[str, Any]:
    space = copy.deepcopy(table.space)
    space["name"] = f"{table.problem}-real-check"
    space["sweep"] = {"num_trials": trials, "max_concurrent": args.workers, "seed": seed, "search": "tpe",
                      "n_startup_trials": args.startup, "max_failures": 0, "resources_per_trial": {"cpu": 1, "gpu": 0},
                      "scheduler": {"type": "asha", "grace_period": args.grace, "reduction_factor": args.reduction_factor}}
    return space


def read_trials(experiment: Path) -> list[dict[str, Any]]:
    """Each real trial's configuration and rung rows (a rung's seconds: the trial's time between its reports),
    in the order Tune created the trials."""
    trials = []
    for result_file in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        lines = [r for r in lines if "fid" in r]
        if not lines:
            continue
        rows, previous = [], 0.0
        for r in lines:
            rows.append({"step": int(r["step"]), "fid": r["fid"], "fid_std": r.get("fid_std", 0.0), "kid": r["kid"],
                         "kid_std": r["kid_std"], "train_seconds": r["time_total_s"] - previous, "eval_seconds": 0.0})
            previous = r["time_total_s"]
        trial_id = lines[0]["trial_id"]
        number = re.search(rf"_{re.escape(trial_id)}_(\d+)_", result_file.parent.name)  # Tune's folder: NAME_ID_N_...
        trials.append({"trial_id": trial_id, "number": int(number.group(1)), "config": config_key(lines[0]["config"]),
                       "rows": rows})
    return sorted(trials, key=lambda t: t["number"])


def table_agreement(table: Table, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Relative differences |real - table| / table of every real rung FID whose configuration the table has."""
    diffs = []
    for trial in (t for t in trials if t["config"] in table.records):
        by_step = {r["step"]: r["fid"] for r in table.records[trial["config"]]}
        diffs += [abs(r["fid"] - by_step[r["step"]]) / by_step[r["step"]] for r in trial["rows"]]
    return {"rungs": len(diffs), "of_rungs": sum(len(t["rows"]) for t in trials),
            "max_relative_difference": max(diffs, default=None), "mean_relative_difference": sum(diffs) / len(diffs) if diffs else None}


def own_table(table: Table, trials: list[dict[str, Any]]) -> Table:
    """A table of a real run's own rung results and durations (a configuration tried twice keeps its longer record)."""
    records: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        if len(t["rows"]) > len(records.get(t["config"], [])):
            records[t["config"]] = t["rows"]
    return Table(f"{table.problem} (real run)", table.space, records, {})


def replayed_decisions(table: Table, trials: list[dict[str, Any]], settings: Settings, seed: int,
                       strategy_name: str = "asha_tpe") -> dict[str, Any]:
    """A strategy (default: the sweep's) replayed over ``table`` for as many trials as the real run had: its
    proposals and stops beside the real ones. ``table`` may be the real run's own (``own_table``)."""
    strategy = STRATEGIES[strategy_name][1](settings, seed)
    real = [[t["config"], t["rows"][-1]["step"]] for t in trials]
    real_stops = [[i, s] for i, (_, s) in enumerate(real) if s < table.max_steps]
    try:
        trace = replay(table, strategy, settings.workers, len(trials) * table.max_steps, max_trials=len(trials))
    except KeyError as exc:  # it proposed a configuration, or a rung, the real run never trained
        return {"real": real, "replayed": None, "match": False, "why": str(exc)}
    ids = list(trace.configs)
    replayed = [[trace.configs[i], trace.stopped_at.get(i)] for i in ids]
    replay_stops = [[ids.index(i), s] for i, s in strategy.stops]
    match = bool(real) and replayed == real and sorted(replay_stops) == real_stops
    return {"real": real, "replayed": replayed, "real_stops": real_stops, "replayed_stops": sorted(replay_stops), "match": match}


def real_check(table: Table, args: argparse.Namespace, workdir: Path, trials: int = 6, seed: int = 0) -> dict[str, Any]:
    """Run the real sweep in ``workdir`` (unless a finished one is there: it is read back) and compare it with the
    table and with its replay."""
    space = check_space(table, args, trials, seed)
    experiment = workdir / "ray_results" / space["name"]
    reused = experiment.is_dir() and len(read_trials(experiment)) == trials
    if reused:  # the space it ran (run_space wrote it beside its results)
        space = yaml.safe_load((workdir / f"{space['name']}.yaml").read_text())
    wall = None if reused else run_space(space, workdir).wall_seconds
    real = read_trials(experiment)
    ran = {k: v for k, v in space.items() if k != "sweep"}
    settings = Settings(ran, args.workers, args.grace, args.reduction_factor, args.startup)
    return {"trials": trials, "seed": seed, "wall_seconds": wall, "reused": reused,
            "table_agreement": table_agreement(table, real),
            "decisions": replayed_decisions(own_table(table, real), real, settings, seed)}
