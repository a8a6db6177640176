"""Sweep efficiency on a small real problem (scikit-learn digits): the compute ASHA + TPE needs to come within
5% of the best FID that a full-budget random search of the same space finds, as a fraction of that search's
compute. Both sweeps run through the real launcher (``python -m sweep.launch``) on the same space, with the
same evaluation (same reference statistics, same initial noises); only ``sweep.search`` and
``sweep.scheduler.type`` differ.

Compute is counted as training steps summed over trials, and as wall time from launch. ASHA's figure is taken
at the first report whose FID is within the tolerance, with every report made before it counted. Both sweeps try
the same number of configurations by default; the figure is also given for the random search cut to its first k
trials, which shows how it depends on the size of the search it is compared with.

    python -m bench.bench_sweep_efficiency --out efficiency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from bench._benchmark import Args, Benchmark, Result, Target
from bench._common import write_result
from bench._markdown import row
from bench._sweeps import SweepRun, run_space

TARGET = Target(1 / 3, at_most=True)  # ASHA + TPE's trial-steps to the target FID, as a fraction of random search's

SPACE: dict[str, Any] = {
    "data": {"dataset": "digits"},
    "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
              "num_heads": {"choice": [1, 2, 4]}, "dropout": {"uniform": [0.0, 0.3]}},
    "diffusion": {"schedule": {"choice": ["linear", "cosine"]}, "timesteps": {"choice": [100, 200, 400]}},
    "train": {"batch_size": 32, "lr": {"loguniform": [1.0e-4, 3.0e-3]}, "warmup_steps": 20,
              "ema_rates": {"choice": [0.9, 0.95, 0.99]}},
    "eval": {"num_samples": 64, "batch_size": 64, "sampler": "ddim", "sampling_steps": 20, "reference_images": 256,
             "kid_subset_size": 64},
    "sweep": {"max_concurrent": 2, "resources_per_trial": {"cpu": 1, "gpu": 0}, "max_failures": 0},
}


def space_for(name: str, args: argparse.Namespace, search: str, scheduler: str, trials: int) -> dict[str, Any]:
    space = copy.deepcopy(SPACE)
    space["name"] = name
    space["train"]["max_steps"] = args.max_steps
    space["eval"]["every_steps"] = args.grace
    space["sweep"].update({"num_trials": trials, "seed": args.seed, "search": search, "n_startup_trials": args.startup,
                           "scheduler": {"type": scheduler, "grace_period": args.grace, "reduction_factor": args.reduction_factor}})
    return space


def compute_to_reach(run: SweepRun, target_fid: float) -> dict[str, Any] | None:
    """Steps, in-trial seconds and wall seconds spent up to the first report with FID <= ``target_fid``."""
    last_step: dict[str, int] = {}
    steps, work = 0, 0.0
    for r in run.reports:
        steps += r.step - last_step.get(r.trial_id, 0)
        last_step[r.trial_id] = r.step
        work += r.work_seconds
        if r.fid <= target_fid:
            return {"steps": steps, "work_seconds": work, "wall_seconds": r.finished_at - run.started_at,
                    "fid": r.fid, "trial_id": r.trial_id, "step": r.step}
    return None


def by_random_search_size(random: SweepRun, asha: SweepRun, tolerance: float, smallest: int) -> list[dict[str, Any]]:
    """The figure for a random search cut to its first k trials (in the order they started), k = ``smallest``..all:
    random trials are independent draws, so the first k of them are a random search of k trials."""
    started: dict[str, float] = {}
    for r in random.reports:  # in time order: a trial's first report tells when it started
        started.setdefault(r.trial_id, r.finished_at - r.work_seconds)
    order = sorted(started, key=started.get)
    rows = []
    for k in range(smallest, len(order) + 1):
        first = set(order[:k])
        reports = [r for r in random.reports if r.trial_id in first]
        baseline = SweepRun(random.started_at, random.finished_at, reports)
        target = baseline.best_fid * (1 + tolerance)
        reached = compute_to_reach(asha, target)
        rows.append({"random_trials": k, "random_steps": baseline.trial_steps, "best_fid": baseline.best_fid, "target_fid": target,
                     "asha_steps": reached["steps"] if reached else None,
                     "steps_ratio": reached["steps"] / baseline.trial_steps if reached else None})
    return rows


def run_summary(run: SweepRun, max_steps: int) -> dict[str, Any]:
    full = {r.trial_id for r in run.reports if r.step >= max_steps}
    return {"trials": run.trials, "full_budget_trials": len(full), "trial_steps": run.trial_steps,
            "work_seconds": run.work_seconds, "wall_seconds": run.wall_seconds, "best_fid": run.best_fid, "reports": len(run.reports)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random-trials", type=int, default=12, help="trials of the full-budget random search")
    p.add_argument("--asha-trials", type=int, default=12, help="trials of ASHA + TPE")
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--grace", type=int, default=100, help="ASHA grace period, and the evaluation interval of both sweeps")
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--startup", type=int, default=4, help="random trials before TPE takes over")
    p.add_argument("--tolerance", type=float, default=0.05, help="ASHA must come within this fraction of random's best FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the sweeps' Ray results, MLflow store and logs here")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-efficiency-"))).resolve()

    random_space = space_for("efficiency-random", args, "random", "fifo", args.random_trials)
    asha_space = space_for("efficiency-asha", args, "tpe", "asha", args.asha_trials)
    random = run_space(random_space, args.workdir)
    asha = run_space(asha_space, args.workdir)
    target = random.best_fid * (1 + args.tolerance)
    reached = compute_to_reach(asha, target)
    result: dict[str, Any] = {
        "space": {k: v for k, v in random_space.items() if k not in ("name", "sweep")},
        "max_steps": args.max_steps, "grace": args.grace, "reduction_factor": args.reduction_factor,
        "tolerance": args.tolerance, "seed": args.seed,
        "random": run_summary(random, args.max_steps), "asha": run_summary(asha, args.max_steps),
        "target_fid": target, "reached": reached,
        "steps_ratio": reached["steps"] / random.trial_steps if reached else None,
        "work_ratio": reached["work_seconds"] / random.work_seconds if reached else None,
        "wall_ratio": reached["wall_seconds"] / random.wall_seconds if reached else None,
        "asha_total_steps_ratio": asha.trial_steps / random.trial_steps,
        "by_random_search_size": by_random_search_size(random, asha, args.tolerance, smallest=min(args.startup, args.random_trials)),
        "workdir": str(args.workdir),
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)


def section(r: Result) -> list[str]:
    """ASHA + TPE against a full-budget random search of the same space, both through sweep.launch."""
    rnd, asha, hit = r["random"], r["asha"], r["reached"]
    lines = [
        "## Sweep efficiency (ASHA + TPE vs full-budget random search)",
        "",
        f"Small real problem: scikit-learn digits, a smoke-size U-Net; six dimensions (heads, dropout, schedule, T, LR, EMA "
        f"rate); FID on {r['space']['eval']['num_samples']} samples every {r['grace']} steps, up to {r['max_steps']} steps; "
        f"ASHA grace {r['grace']}, reduction factor {r['reduction_factor']:g}; two trials at a time on CPU workers.",
        "",
        "| sweep | trials | trial-steps | in-trial s | wall s | best FID |",
        "|---|---|---|---|---|---|",
        f"| random search, every trial to {r['max_steps']} steps (`search: random`, `scheduler: fifo`) | {rnd['trials']} | "
        f"{rnd['trial_steps']:,} | {rnd['work_seconds']:.0f} | {rnd['wall_seconds']:.0f} | {rnd['best_fid']:.2f} |",
        f"| ASHA + TPE, whole sweep | {asha['trials']} | {asha['trial_steps']:,} | {asha['work_seconds']:.0f} | "
        f"{asha['wall_seconds']:.0f} | {asha['best_fid']:.2f} |",
    ]
    if hit is None:
        lines += ["", f"**ASHA + TPE did not come within {100 * r['tolerance']:.0f}% of the random search's best FID "
                  f"({r['target_fid']:.2f}) in this run**; its whole sweep cost {r['asha_total_steps_ratio']:.2f}x the random "
                  "search's trial-steps."]
    else:
        lines += [
            f"| ASHA + TPE, until its first FID <= {r['target_fid']:.2f} (random's best + {100 * r['tolerance']:.0f}%) | | "
            f"{hit['steps']:,} | {hit['work_seconds']:.0f} | {hit['wall_seconds']:.0f} | {hit['fid']:.2f} |",
            "",
            f"- Compute to reach it, as a fraction of the random search's: **{r['steps_ratio']:.2f}** of the trial-steps "
            f"(target {TARGET}: {TARGET.verdict(r['steps_ratio'])}), {r['work_ratio']:.2f} of the in-trial time, "
            f"{r['wall_ratio']:.2f} of the wall time (both sweeps' wall time includes starting Ray and the launcher's own work).",
            f"- Reached by trial {hit['trial_id']} at step {hit['step']}; the whole ASHA sweep cost {r['asha_total_steps_ratio']:.2f}x "
            "the random search's trial-steps.",
        ]
    if "full_budget_trials" in asha:
        lines.append(f"- ASHA let {asha['full_budget_trials']} of its {asha['trials']} trials run to {r['max_steps']} steps "
                     f"(random search: all {rnd['trials']}). Asynchronous ASHA promotes a trial when it is in the top "
                     f"1/{r['reduction_factor']:g} of the results recorded at its rung so far, so the first trials to reach "
                     "a rung, with little competition there, go on: with few trials per rung it prunes little.")
    sizes = r.get("by_random_search_size", [])
    if sizes:
        lines += [
            "",
            "The same figure against a random search of its first k trials (random trials are independent draws, so these "
            "are random searches of k trials; a larger one finds a better FID, a harder target, at a proportionally higher cost):",
            "",
            f"| random search trials | its trial-steps | its best FID | ASHA + TPE trial-steps to within {100 * r['tolerance']:.0f}% | ratio |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {s['random_trials']} | {s['random_steps']:,} | {s['best_fid']:.2f} | "
                  + (f"{s['asha_steps']:,} | {s['steps_ratio']:.2f} |" if s["asha_steps"] is not None else "not reached | - |")
                  for s in sizes]
        lines.append("")
    lines.append("- One seed of each sweep (FID on 64 samples is noisy at the 5% level): read the figure as an order of "
                 "magnitude, and rerun with `--seed` for more.")
    return lines


def summary(r: Result) -> str:
    ratio = f"**{r['steps_ratio']:.2f}**" if r["steps_ratio"] is not None else "not reached"
    return row(f"trial-steps for ASHA + TPE to reach random search's best FID +{100 * r['tolerance']:.0f}%",
               r["reached"]["steps"] if r["reached"] else "-",
               f"{r['random']['trial_steps']} (full-budget random search, {r['random']['trials']} trials)",
               ratio, TARGET, TARGET.verdict(r["steps_ratio"]))


BENCHMARK = Benchmark(
    name="efficiency",
    title="Sweep efficiency (ASHA + TPE vs full-budget random search)",
    module="bench.bench_sweep_efficiency",
    order=70,
    section=section,
    # Digits-size models on CPU workers whatever the device.
    args=Args(quick="--random-trials 3 --asha-trials 4 --max-steps 100 --grace 50"),
    takes_device=False,
    target=TARGET,
    summary=summary,
)


if __name__ == "__main__":
    main()
