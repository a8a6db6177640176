"""Orchestration overhead: the smoke sweep's wall time against the training and evaluation time measured
inside its trials. Trials run one at a time (``sweep.max_concurrent=1``) so that the summed in-trial time is
a wall-clock quantity; everything else the launcher does (validation, Ray start, trial scheduling,
checkpoints, MLflow logging, the summary, the report and the best trial's interpolations) is overhead.

    python -m bench.bench_overhead --out overhead.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench._common import write_result
from bench._sweeps import ROOT, run_space
from diffusion_core.config import read_yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "smoke.yaml")
    p.add_argument("--workdir", type=Path, default=None, help="keep the sweep's Ray results, MLflow store and log here")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-overhead-"))).resolve()

    space = read_yaml(args.space)
    space["name"] = f"overhead-{space['name']}"
    space.setdefault("sweep", {})["max_concurrent"] = 1
    run = run_space(space, workdir)
    first_start = min(r.finished_at - r.work_seconds for r in run.reports)
    last_report = max(r.finished_at for r in run.reports)
    overhead = run.wall_seconds - run.work_seconds
    result: dict[str, Any] = {
        "space": str(args.space.relative_to(ROOT) if args.space.is_relative_to(ROOT) else args.space),
        "trials": run.trials,
        "reports": len(run.reports),
        "trial_steps": run.trial_steps,
        "wall_seconds": run.wall_seconds,
        "work_seconds": run.work_seconds,
        "overhead_seconds": overhead,
        "overhead_fraction": overhead / run.wall_seconds,
        "before_first_trial_seconds": first_start - run.started_at,
        "after_last_report_seconds": run.finished_at - last_report,
        "workdir": str(workdir),
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
