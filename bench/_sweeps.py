"""Helpers of the sweep-level benchmarks: run ``python -m sweep.launch`` on a space in a scratch folder,
then read back every report each trial made (Ray's ``result.json`` lines) with its wall-clock time."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffusion_core.evaluate import Evaluator
from sweep.config import parse_sweep

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Report:
    """One ``tune.report`` of one trial: its step, FID and the seconds it spent training and evaluating."""

    trial_id: str
    step: int
    fid: float
    finished_at: float  # Unix time of the report
    work_seconds: float  # train + eval (+ the sampling study) since the trial's previous report


@dataclass(frozen=True)
class SweepRun:
    started_at: float
    finished_at: float
    reports: list[Report]

    @property
    def wall_seconds(self) -> float:
        return self.finished_at - self.started_at

    @property
    def trials(self) -> int:
        return len({r.trial_id for r in self.reports})

    @property
    def trial_steps(self) -> int:
        """Training steps summed over trials (a trial's last report holds its final step)."""
        last: dict[str, int] = {}
        for r in self.reports:
            last[r.trial_id] = max(last.get(r.trial_id, 0), r.step)
        return sum(last.values())

    @property
    def work_seconds(self) -> float:
        return sum(r.work_seconds for r in self.reports)

    @property
    def best_fid(self) -> float:
        return min(r.fid for r in self.reports)


def run_space(space: dict[str, Any], workdir: Path, overrides: list[str] = ()) -> SweepRun:
    """Write ``space`` to ``workdir`` and run the real launcher on it there (local Ray, SQLite MLflow in
    ``workdir``); its console output goes to ``workdir/<name>.log``. Raises with the log's tail on failure.

    The FID reference statistics go to ``workdir/fid_reference`` and are computed before the timed launch (a
    sweep computes them once and caches them), so every sweep run in ``workdir`` shares them."""
    workdir.mkdir(parents=True, exist_ok=True)
    space = copy.deepcopy(space)
    space.setdefault("eval", {})["cache_dir"] = str(workdir / "fid_reference")
    Evaluator(parse_sweep(space).run_config({}), "cpu").reference  # noqa: B018 -- fills the cache
    name = space["name"]
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    storage = workdir / "ray_results"
    cmd = [sys.executable, "-m", "sweep.launch", str(path), "--storage-path", str(storage),
           "--set", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}"]
    for override in overrides:
        cmd += ["--set", override]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = workdir / f"{name}.log"
    print(f"$ {' '.join(cmd)}  (log: {log})", flush=True)
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    finished = time.time()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"sweep {name} exited with status {proc.returncode}:\n{tail}")
    return SweepRun(started, finished, read_reports(storage / name))


def read_reports(experiment: Path) -> list[Report]:
    """Every trial's reports in the Ray experiment folder, in the order they were made."""
    reports = []
    for result_file in sorted(experiment.glob("*/result.json")):
        for line in result_file.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if "fid" not in r:
                continue
            work = r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) + r.get("sampling_study_seconds", 0.0)
            reports.append(Report(r["trial_id"], int(r["step"]), float(r["fid"]), float(r["timestamp"]), float(work)))
    if not reports:
        raise RuntimeError(f"no trial reports under {experiment}")
    return sorted(reports, key=lambda r: r.finished_at)
