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

from bench._benchmark import Benchmark, Result, Target
from bench._common import write_result
from bench._markdown import row
from bench._sweeps import ROOT, run_space
from diffusion_core.config import read_yaml

TARGET = Target(0.10, at_most=True, percent=True)  # overhead as a fraction of the sweep's wall time


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


def section(r: Result) -> list[str]:
    wall = r["wall_seconds"]
    between = r["overhead_seconds"] - r["before_first_trial_seconds"] - r["after_last_report_seconds"]

    def share(seconds: float) -> str:
        return f"{100 * seconds / wall:.0f}%"

    return [
        "## Orchestration overhead (smoke sweep)",
        "",
        "| | seconds | share of wall |",
        "|---|---|---|",
        f"| wall time of `python -m sweep.launch {r['space']}` (one trial at a time) | {wall:.0f} | 100% |",
        row(f"training + evaluation inside the {r['trials']} trials ({r['trial_steps']:,} steps, {r['reports']} reports)",
            f"{r['work_seconds']:.0f}", share(r["work_seconds"])),
        row(f"**overhead** (target {TARGET}: {TARGET.verdict(r['overhead_fraction'])})", f"{r['overhead_seconds']:.1f}",
            f"**{100 * r['overhead_fraction']:.1f}%**"),
        row("of which before the first trial trained (validation, preflight, Ray start, first trial's setup)",
            f"{r['before_first_trial_seconds']:.0f}", share(r["before_first_trial_seconds"])),
        row("of which after the last report (Ray shutdown, summary, report, the best trial's interpolation grids)",
            f"{r['after_last_report_seconds']:.0f}", share(r["after_last_report_seconds"])),
        row("of which between trials and reports (a trial's start in a reused worker process: Trainer, MLflow run; "
            "checkpoints, MLflow logging, Ray's bookkeeping)", f"{between:.0f}", share(between)),
        "",
        "- Trials run in reused worker processes (`reuse_actors`): only the first trial pays for starting a process and "
        "importing PyTorch, Ray and MLflow (~10 s on 2 cores). The reference statistics are computed before the timed run "
        "(a sweep computes them once and caches them).",
        "- The driver opens MLflow's store while Ray starts and stops Ray while it writes the sweep up (`sweep.runner.run_sweep`).",
        "- A smoke trial trains for seconds, so fixed costs weigh far more here than in a real sweep, whose trials train for "
        "hours: the fraction is an upper bound for real use.",
    ]


def summary(r: Result) -> str:
    return row("orchestration overhead of the smoke sweep, s", f"{r['overhead_seconds']:.1f} of {r['wall_seconds']:.0f} wall",
               f"{r['work_seconds']:.0f} in trials", f"**{100 * r['overhead_fraction']:.1f}%**", TARGET,
               TARGET.verdict(r["overhead_fraction"]))


BENCHMARK = Benchmark(
    name="overhead",
    title="Orchestration overhead",
    module="bench.bench_overhead",
    order=80,
    section=section,
    takes_device=False,
    target=TARGET,
    summary=summary,
)


if __name__ == "__main__":
    main()
