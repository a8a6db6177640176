"""The tables of the efficiency benchmark (tabular HPO benchmarks in the manner of NAS-Bench-201 / HPOBench):
every configuration of a discrete sweep space trained once to the full budget through the project's own
Trainer and Evaluator, recording at each rung what a trial would report (FID, its bootstrap std, KID and its
std) and what the rung cost (training seconds, evaluation seconds). The strategies are then replayed over a
table for many seeds without training anything (``bench._replay``).

The EMA rate is a search dimension, but its values are trained as one EMA bank: an EMA does not change the
training, so each rate's evaluations are exactly those of a trial run with that rate alone, and the bank's
training is paid once (each rate's row carries the whole training time, as its own trial would).

    python -m bench._efficiency_table digits --out bench/tables/digits.json
    python -m bench._efficiency_table mnist16 --data-root DIR --out bench/tables/mnist16.json
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench._common import cpu_model, write_result
from diffusion_core.evaluate import Evaluator, evaluate_bank
from diffusion_core.trainer import Trainer
from sweep.config import SweepConfig, parse_sweep, set_path

EMA_PATH = "train.ema_rates"
MEASURED = ("fid", "fid_std", "kid", "kid_std", "train_seconds", "eval_seconds")

_COMMON: dict[str, Any] = {
    "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "num_heads": 2, "dropout": 0.1},
    "diffusion": {"schedule": {"choice": ["linear", "cosine"]}, "timesteps": {"choice": [100, 400]}},
    "train": {"batch_size": 32, "lr": {"choice": [3.0e-4, 1.0e-3, 3.0e-3]}, "warmup_steps": 20,
              "ema_rates": {"choice": [0.9, 0.99]}, "max_steps": 300},
    "eval": {"every_steps": 100, "num_samples": 64, "batch_size": 64, "sampler": "ddim", "sampling_steps": 20,
             "reference_images": 256, "kid_subset_size": 64},
}
# The two problems: the smoke space made discrete (digits, 8x8), and a 2,000-image MNIST subset at 16x16.
PROBLEMS: dict[str, dict[str, Any]] = {
    "digits": {"data": {"dataset": "digits"}, "model": {"attention_resolutions": [4]}},
    "mnist16": {"data": {"dataset": "mnist", "download": False, "image_size": 16, "subset": 2000},
                "model": {"attention_resolutions": [8]}},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s leaves written over it (a deep copy)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def problem_space(problem: str, data_root: str | None = None) -> dict[str, Any]:
    """The sweep file (without its ``sweep`` section) of ``problem``, every dimension a ``choice``."""
    space = merge(_COMMON, PROBLEMS[problem])
    space["name"] = f"efficiency-{problem}"
    if data_root is not None:
        space["data"]["root"] = data_root
    return space


def grid(values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of each path, the last path varying fastest."""
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def trainings(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the space's dimensions but the EMA rate."""
    return grid({d.path: list(d.choices or []) for d in cfg.dimensions if d.path != EMA_PATH})


def train_one(cfg: SweepConfig, params: dict[str, Any], rates: list[float]) -> list[dict[str, Any]]:
    """Train ``params`` with the EMA bank ``rates`` to ``train.max_steps``: one row per rung and rate."""
    run = cfg.run_config({**params, EMA_PATH: rates})
    trainer = Trainer(run, "cpu")
    evaluator = Evaluator(run, "cpu")
    rows = []
    while trainer.step < run.train.max_steps:
        started = time.perf_counter()
        trainer.train_until(min(run.train.max_steps, trainer.step + run.eval.every_steps))
        train_seconds = time.perf_counter() - started
        bank = evaluate_bank(evaluator, trainer.emas.models(), trainer.schedule)
        for rate, result in bank.results.items():
            rows.append({"params": {**params, EMA_PATH: rate}, "step": trainer.step, "fid": result.fid,
                         "fid_std": result.fid_std, "kid": result.kid, "kid_std": result.kid_std,
                         "train_seconds": train_seconds, "eval_seconds": result.seconds})
    return rows


def build(problem: str, out: Path, data_root: str | None, cache_dir: str | None) -> None:
    """Train every configuration of ``problem`` not yet in ``out``, rewriting ``out`` after each one (resumable)."""
    space = problem_space(problem, data_root)
    if cache_dir:
        space["eval"]["cache_dir"] = cache_dir
    cfg = parse_sweep(space, f"<{problem}>")
    rates = next(d.choices for d in cfg.dimensions if d.path == EMA_PATH)
    table = json.loads(out.read_text()) if out.is_file() else {
        "problem": problem, "space": problem_space(problem), "rows": [],
        "build": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "seconds": 0.0, "trainings": 0}}
    done = {json.dumps({k: v for k, v in r["params"].items() if k != EMA_PATH}, sort_keys=True) for r in table["rows"]}
    for params in trainings(cfg):
        if json.dumps(params, sort_keys=True) in done:
            continue
        started = time.perf_counter()
        table["rows"] += train_one(cfg, params, rates)
        table["build"]["seconds"] += time.perf_counter() - started
        table["build"]["trainings"] += 1
        write_result(table, out)
        print(f"{problem}: {table['build']['trainings']} trainings, {table['build']['seconds']:.0f} s: {params}", flush=True)


@dataclass(frozen=True)
class Table:
    """A built table: the sweep space and, per configuration (a frozen ``{path: value}``), its rung records."""

    problem: str
    space: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]  # config key -> rows in step order
    build: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Table:
        """The table in ``path``; its space keeps, per dimension, the values that were trained (a build cut short
        leaves a complete sub-grid), and every combination of them must be there to the last rung."""
        raw = json.loads(path.read_text())
        records: dict[str, list[dict[str, Any]]] = {}
        for row in raw["rows"]:
            records.setdefault(config_key(row["params"]), []).append(row)
        for rows in records.values():
            rows.sort(key=lambda r: r["step"])
        space = trained_space(raw["space"], [r["params"] for r in raw["rows"]])
        table = cls(raw["problem"], space, records, raw["build"])
        missing = [c for c in grid(trained_values(space)) if config_key(c) not in records]
        incomplete = [k for k, rows in records.items() if rows[-1]["step"] != table.max_steps]
        if missing or incomplete:
            raise ValueError(f"{path}: {len(missing)} configurations of the grid missing, {len(incomplete)} not trained to the end")
        return table

    @property
    def max_steps(self) -> int:
        return int(self.space["train"]["max_steps"])

    @property
    def every_steps(self) -> int:
        return int(self.space["eval"]["every_steps"])

    def rungs(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rung records of a configuration (KeyError naming it when the table lacks it)."""
        key = config_key(params)
        if key not in self.records:
            raise KeyError(f"{self.problem}: no configuration {key} in the table")
        return self.records[key]

    def final_fids(self) -> dict[str, float]:
        """Each configuration's FID at ``train.max_steps``."""
        return {key: rows[-1]["fid"] for key, rows in self.records.items()}


def trained_values(space: dict[str, Any]) -> dict[str, list[Any]]:
    """Each ``choice`` dimension of ``space``: its path and values."""
    return {d.path: list(d.choices or []) for d in parse_sweep(space, "<table>").dimensions}


def trained_space(space: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    """``space`` with each choice cut to the values some trained configuration has (in their original order)."""
    out = copy.deepcopy(space)
    for path, values in trained_values(space).items():
        seen = {json.dumps(p[path]) for p in params}
        set_path(out, path, {"choice": [v for v in values if json.dumps(v) in seen]})
    return out


def config_key(params: dict[str, Any]) -> str:
    """A configuration's key: its parameters as sorted JSON, numbers as floats (Optuna hands ints back as ints, BOHB
    numpy scalars)."""
    return json.dumps({k: float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else
                       str(v) if isinstance(v, str) else v for k, v in sorted(params.items())})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("problem", choices=sorted(PROBLEMS))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default=None, help="data.root for datasets read from disk (MNIST)")
    p.add_argument("--cache-dir", default=None, help="eval.cache_dir: where the FID reference statistics are cached")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    build(args.problem, args.out, args.data_root, args.cache_dir)


if __name__ == "__main__":
    main()
