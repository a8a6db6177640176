"""The replay against Ray Tune's own controller, without training: a real ``Tuner`` runs a strategy's searcher and
scheduler on a trainable that reads its rungs from the table (sleeping ``scale`` x each rung's recorded seconds, so
events come in the table's order, and checkpointing its rung so a paused trial resumes where it stopped); then the
strategy is replayed over the same table and the proposals and stops compared, trial by trial. This checks the
replay's stand-ins for Tune (``bench._strategies``, ``bench._bohb``), pauses and resumes included. Rungs whose finish
times lie closer than Ray's own latency may come in another order under Tune than in the replay.

    python -m bench._tune_check bench/tables/digits.json --strategy bohb --trials 12 --storage DIR
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from bench._efficiency_table import Table
from bench._replay import rung_result, rung_seconds
from bench._replay_check import read_trials, replayed_decisions
from bench._strategies import STRATEGIES, Settings

RUNG_FILE = "rung.json"


def table_trainable(config: dict[str, Any], *, table_path: str, scale: float) -> None:
    """Report the table's rungs of ``config`` from the checkpointed rung on, each after ``scale`` x its seconds."""
    rows = Table.read(Path(table_path)).rungs(config)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads((Path(folder) / RUNG_FILE).read_text())["next"]
    for k in range(start, len(rows)):
        time.sleep(scale * rung_seconds(rows, k))
        result = {key: v for key, v in rung_result(rows[k], k + 1).items() if key != "training_iteration"}
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / RUNG_FILE).write_text(json.dumps({"next": k + 1}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def tune_run(table_path: Path, name: str, seed: int, trials: int, workers: int, scale: float, storage: Path) -> None:
    """Run strategy ``name`` under a real Tuner on the table's trainable, into ``storage/name``."""
    table = Table.read(table_path)
    strategy = STRATEGIES[name][1](Settings(table.space, workers, 100, 3, 4), seed)
    trainable = tune.with_resources(tune.with_parameters(table_trainable, table_path=str(table_path.resolve()), scale=scale),
                                    {"cpu": 1})
    ray_tmp = tempfile.mkdtemp(prefix="tune-check-")  # short: Ray's socket paths must fit AF_UNIX's 107 bytes
    ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR", _temp_dir=ray_tmp)
    try:
        tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=strategy.searcher, scheduler=strategy.scheduler,
                                                          num_samples=trials, max_concurrent_trials=workers),
                   run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0)).fit()
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def tune_check(table_path: Path, name: str, seed: int, trials: int, workers: int, scale: float, storage: Path) -> dict[str, Any]:
    """Run (or, when ``storage`` holds a finished run, read back) strategy ``name`` under Tune, and replay it."""
    started = time.perf_counter()
    experiment = storage / name
    reused = experiment.is_dir() and len(read_trials(experiment)) == trials
    if not reused:
        tune_run(table_path, name, seed, trials, workers, scale, storage)
    table = Table.read(table_path)
    decisions = replayed_decisions(table, read_trials(experiment), Settings(table.space, workers, 100, 3, 4), seed, name)
    return {"problem": table.problem, "strategy": name, "seed": seed, "trials": trials, "scale": scale, "reused": reused,
            "wall_seconds": time.perf_counter() - started, "decisions": decisions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("--strategy", default="bohb", choices=["asha_tpe", "noise_asha_tpe", "bohb"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--scale", type=float, default=0.3, help="seconds slept per second the table recorded")
    p.add_argument("--storage", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    result = tune_check(args.table, args.strategy, args.seed, args.trials, args.workers, args.scale, args.storage)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
