"""Sweep efficiency, measured fairly and over seeds: every strategy replayed over the same tables (each configuration
of a discrete sweep space trained once to the full budget: ``bench._efficiency_table``) with the sweep's concurrency
and a simulated clock (``bench._replay``), for many seeds, on two problems (scikit-learn digits, MNIST at 16x16).

Headline: for each seed, the target is the best FID a full-budget random search of ``--random-trials`` trials finds,
+5%; each strategy's trial-steps until its own first report at or below that target, divided by the random search's
own trial-steps to it. Every strategy may spend the random search's whole budget. Beside it: the anytime curves
(best FID so far against trial-steps, mean and min-max over seeds), Spearman's rho of each rung's FID against the
final FID, the rung FID's measured noise, and how many of the trials each pruner stopped would have reached the
target. ``--real-check`` also runs one real ``sweep.launch`` sweep and replays it (``bench._replay_check``).

    python -m bench.bench_efficiency --seeds 10 --real-check --out efficiency.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench._benchmark import Args, Benchmark, Result, Target
from bench._common import write_result
from bench._efficiency_plot import plot
from bench._efficiency_stats import (
    anytime,
    curve_band,
    eval_share,
    oracle_steps,
    rank_fidelity,
    ratio,
    rung_noise,
    spread,
    time_to,
    winners_cut,
)
from bench._efficiency_table import Table
from bench._markdown import row
from bench._replay import replay
from bench._replay_check import real_check
from bench._strategies import STRATEGIES, Settings
from bench._tune_check import tune_check

ROOT = Path(__file__).resolve().parents[1]
TARGET = Target(1 / 3, at_most=True)  # ours' mean trial-steps to the target, as a fraction of random search's
OURS = "asha_tpe"
FULL_BUDGET = ("random", "tpe")
NOISE_AWARE = ("noise_asha_tpe", "noise_asha_tpe_z2")
TUNE_SCALE = 0.3  # seconds a table-backed trial sleeps per recorded second: rungs of 5-40 s, far above Ray's latency
TUNE_CHECKS = [("digits", "asha_tpe", 0), ("digits", "bohb", 0), ("mnist16", "bohb", 1)]  # (problem, strategy, seed)


def seed_run(table: Table, settings: Settings, seed: int, random_trials: int, tolerance: float) -> dict[str, Any]:
    """Every strategy replayed once with ``seed``: its time to this seed's target, curve and pruning record."""
    budget = random_trials * table.max_steps
    budgets = list(range(table.every_steps, budget + 1, table.every_steps))
    out: dict[str, Any] = {"seed": seed, "strategies": {}}
    traces, built = {}, {}
    for name, (_, build) in STRATEGIES.items():
        built[name] = build(settings, seed)  # a search without pruning is a search of random_trials whole trials
        trials = random_trials if name in FULL_BUDGET else None
        traces[name] = replay(table, built[name], settings.workers, budget, max_trials=trials)
    target = traces["random"].best_fid * (1 + tolerance)
    baseline = time_to(traces["random"], target)
    out.update(target=target, random_configs=sorted(set(traces["random"].configs.values())),
               oracle_ratio=oracle_steps(table, target) / baseline["trial_steps"])
    for name, trace in traces.items():
        hit = time_to(trace, target)
        out["strategies"][name] = {
            "hit": hit, "steps_ratio": ratio(hit, baseline, "trial_steps"), "seconds_ratio": ratio(hit, baseline, "seconds"),
            "best_fid": trace.best_fid, "trials": len(trace.configs), "curve": anytime(trace, budgets),
            "pruning": None if name in FULL_BUDGET else winners_cut(table, built[name].stops, trace.configs, target),
        }
    return out


def problem_result(table: Table, settings: Settings, seeds: list[int], random_trials: int, tolerance: float) -> dict[str, Any]:
    runs = [seed_run(table, settings, s, random_trials, tolerance) for s in seeds]
    per_seed_rho = [rank_fidelity(table, r["random_configs"]) for r in runs]
    steps = sorted({step for rho in per_seed_rho for step in rho})
    strategies = {}
    for name in STRATEGIES:
        mine = [r["strategies"][name] for r in runs]
        stops = [m["pruning"] for m in mine if m["pruning"] is not None]
        strategies[name] = {
            "steps_ratio": spread([m["steps_ratio"] for m in mine]), "seconds_ratio": spread([m["seconds_ratio"] for m in mine]),
            "best_fid": spread([m["best_fid"] for m in mine]), "trials": spread([m["trials"] for m in mine]),
            "curve": curve_band([m["curve"] for m in mine]),
            "pruning": {k: sum(s[k] for s in stops) for k in ("stopped", "would_have_reached_target")} if stops else None,
        }
    for r in runs:  # aggregated above; the JSON keeps each seed's figures, not its curves and draws
        r.pop("random_configs")
        for m in r["strategies"].values():
            m.pop("curve")
    return {
        "problem": table.problem, "configurations": len(table.records), "table_build": table.build,
        "budget_steps": random_trials * table.max_steps, "every_steps": table.every_steps, "max_steps": table.max_steps,
        "targets": spread([r["target"] for r in runs]), "oracle_ratio": spread([r["oracle_ratio"] for r in runs]),
        "strategies": strategies, "seeds": runs,
        "rank_fidelity": {"table": rank_fidelity(table),
                          "random_search_draws": {step: spread([rho.get(step) for rho in per_seed_rho]) for step in steps}},
        "noise": rung_noise(table), "eval_share": eval_share(table),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=Path, default=ROOT / "bench" / "tables", help="folder of the problems' tables")
    p.add_argument("--problems", nargs="*", default=["digits", "mnist16"])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--random-trials", type=int, default=12, help="trials of the full-budget random search (the budget)")
    p.add_argument("--workers", type=int, default=2, help="trials at a time (sweep.max_concurrent)")
    p.add_argument("--grace", type=int, default=100)
    p.add_argument("--reduction-factor", type=float, default=3)
    p.add_argument("--startup", type=int, default=4, help="random trials before TPE takes over")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "efficiency.png")
    p.add_argument("--real-check", action="store_true", help="also run a real 6-trial sweep of digits and replay it")
    p.add_argument("--check-dir", type=Path, default=None,
                   help="the real sweep's folder (default: a new temporary one); a finished sweep there is read back")
    p.add_argument("--tune-check", action="store_true",
                   help="also run ours and BOHB under Ray Tune's own controller on table-backed trials and replay them")
    p.add_argument("--tune-check-dir", type=Path, default=None, help="their folder (default: a new temporary one)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    result: dict[str, Any] = {"seeds": args.seeds, "random_trials": args.random_trials, "workers": args.workers,
                              "grace": args.grace, "reduction_factor": args.reduction_factor, "startup": args.startup,
                              "tolerance": args.tolerance, "strategies": {k: v[0] for k, v in STRATEGIES.items()}, "problems": {}}
    for problem in args.problems:
        table = Table.read(args.tables / f"{problem}.json")
        settings = Settings(table.space, args.workers, args.grace, args.reduction_factor, args.startup)
        result["problems"][problem] = problem_result(table, settings, list(range(args.seeds)), args.random_trials, args.tolerance)
        print(f"{problem}: " + ", ".join(f"{k} {v['steps_ratio']['mean']}" for k, v in result["problems"][problem]["strategies"].items()), flush=True)
    if args.real_check:
        check_dir = args.check_dir or Path(tempfile.mkdtemp(prefix="efficiency-check-"))
        result["real_check"] = real_check(Table.read(args.tables / "digits.json"), args, check_dir)
    if args.tune_check:
        folder = args.tune_check_dir or Path(tempfile.mkdtemp(prefix="efficiency-tune-check-"))
        result["tune_checks"] = [tune_check(args.tables / f"{problem}.json", name, seed, 12, args.workers, TUNE_SCALE,
                                            folder / f"{problem}-{name}-{seed}") for problem, name, seed in TUNE_CHECKS]
    plot(result, args.plot)
    result["plot"] = args.plot.name
    write_result(result, args.out)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio_cell(s: dict[str, Any]) -> str:
    """Mean ± std [min-max] of per-seed ratios, and how many seeds never reached the target."""
    if s["mean"] is None:
        return "never reached"
    unreached = f", {s['missing']} seed(s) not reached" if s["missing"] else ""
    return f"**{s['mean']:.2f}** ± {s['std']:.2f} [{s['min']:.2f}-{s['max']:.2f}]{unreached}"


def strategy_table(prob: Result, described: dict[str, str]) -> list[str]:
    lines = ["| strategy | trial-steps to target / random's (mean ± sd [min-max]) | wall time to target / random's | "
             "best FID within the budget | trials started | stopped early (of them would have reached the target) |",
             "|---|---|---|---|---|---|"]
    for name, s in prob["strategies"].items():
        pruning = s["pruning"]
        cut = f"{pruning['stopped']} ({pruning['would_have_reached_target']})" if pruning else "-"
        lines.append(row(f"`{name}`: {described[name]}", ratio_cell(s["steps_ratio"]), fmt(s["seconds_ratio"]["mean"]),
                         f"{fmt(s['best_fid']['mean'])} ± {fmt(s['best_fid']['std'])}", fmt(s["trials"]["mean"], 1), cut))
    return lines


def per_seed_table(prob: Result) -> list[str]:
    seeds = prob["seeds"]
    lines = ["| strategy | " + " | ".join(f"seed {s['seed']}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|",
             row("target FID (random's best + 5%)", *(f"{s['target']:.1f}" for s in seeds))]
    for name in prob["strategies"]:
        lines.append(row(f"`{name}`", *(fmt(s["strategies"][name]["steps_ratio"]) for s in seeds)))
    return lines


def anytime_table(prob: Result) -> list[str]:
    """Mean best FID so far at a quarter, half and all of the budget, and the budgets where ours is above a peer."""
    budgets = list(range(prob["every_steps"], prob["budget_steps"] + 1, prob["every_steps"]))
    marks = [len(budgets) // 4 - 1, len(budgets) // 2 - 1, len(budgets) - 1]
    ours = prob["strategies"][OURS]["curve"]["mean"]
    lines = ["| strategy | " + " | ".join(f"{budgets[m]:,} trial-steps" for m in marks) + " | budgets where ours' mean is above it |",
             "|---" * (len(marks) + 2) + "|"]
    for name, s in prob["strategies"].items():
        mean = s["curve"]["mean"]
        above = sum(1 for o, p in zip(ours, mean, strict=True) if o is not None and p is not None and o > p)
        where = "-" if name == OURS else f"{above} of {len(budgets)}"
        lines.append(row(f"`{name}`", *(fmt(mean[m], 1) for m in marks), where))
    return lines


def fidelity_table(prob: Result) -> list[str]:
    table, draws, noise = prob["rank_fidelity"]["table"], prob["rank_fidelity"]["random_search_draws"], prob["noise"]
    lines = ["| rung (step) | Spearman's rho vs final FID, whole table | over each seed's random-search draws (mean ± sd) | "
             "median FID std (bootstrap) | relative | gap between FID-adjacent configurations, in sigmas (median) |",
             "|---|---|---|---|---|---|"]
    for step, n in noise.items():
        d = draws.get(step) or {"mean": None, "std": None}
        lines.append(row(step, fmt(table.get(step)), f"{fmt(d['mean'])} ± {fmt(d['std'])}", fmt(n["median_fid_std"]),
                         f"{100 * n['relative_std']:.1f}%", fmt(n["neighbour_gap_in_sigmas"])))
    return lines


def obstacles(prob: Result) -> list[str]:
    """What the measurements say stands between ours and the target, in the problem's own figures."""
    s = prob["strategies"]
    ours = s[OURS]
    first = next(iter(prob["noise"]))
    rho = prob["rank_fidelity"]["table"].get(first)
    hits = [seed["strategies"]["random"]["hit"]["trial_steps"] / prob["budget_steps"] for seed in prob["seeds"]]
    pruning = ours["pruning"] or {"stopped": 0, "would_have_reached_target": 0}
    noise = {name: (s[name]["steps_ratio"]["mean"], (s[name]["pruning"] or {}).get("stopped")) for name in NOISE_AWARE}
    return [
        f"- Random search itself reaches its target after {100 * sum(hits) / len(hits):.0f}% of its budget on average "
        f"(min {100 * min(hits):.0f}%): with {prob['configurations']} configurations, a good one is drawn early, so the "
        "denominator of the ratio is small.",
        f"- Even an oracle that trains only the configuration that reaches the target first, only until it does, needs "
        f"{fmt(prob['oracle_ratio']['mean'])} of random search's trial-steps on average (min {fmt(prob['oracle_ratio']['min'])}, "
        f"max {fmt(prob['oracle_ratio']['max'])}): no strategy's ratio can be lower on this table.",
        f"- At the first rung (step {first}) Spearman's rho against the final FID is {fmt(rho)}, and FID-adjacent "
        f"configurations are {fmt(prob['noise'][first]['neighbour_gap_in_sigmas'])} sigmas apart (median): "
        "pruning there ranks partly on noise.",
        f"- ASHA stopped {pruning['stopped']} trials over the seeds; {pruning['would_have_reached_target']} of them would "
        "have reached the target at a later rung.",
        f"- Evaluation is {100 * prob['eval_share']:.0f}% of the table's rung seconds: a pruned trial still paid for its "
        f"evaluations, so wall-time ratios (mean {fmt(ours['seconds_ratio']['mean'])} for ours) trail the trial-step ones.",
        f"- Noise-aware ASHA: mean ratio {fmt(noise['noise_asha_tpe'][0])} (1 sigma, {noise['noise_asha_tpe'][1]} stops) and "
        f"{fmt(noise['noise_asha_tpe_z2'][0])} (2 sigma, {noise['noise_asha_tpe_z2'][1]} stops) against plain ASHA's "
        f"{fmt(ours['steps_ratio']['mean'])} ({pruning['stopped']} stops).",
    ]


def short(config: str) -> str:
    """A configuration key as its values only: ``cosine, 100, 0.99, 0.001``."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in json.loads(config).values())


def check_lines(r: Result) -> list[str]:
    """The real sweep beside the table and beside its own replay."""
    c = r.get("real_check")
    if c is None:
        return ["Replay against a real sweep: not run in this measurement (`--real-check`)."]
    a, d = c["table_agreement"], c["decisions"]
    ran = "read back from an earlier run in `--check-dir`" if c["reused"] else f"{c['wall_seconds']:.0f} s"
    lines = [f"**Replay against a real sweep** (`sweep.launch` of the digits space, ASHA + TPE, {c['trials']} trials, seed "
             f"{c['seed']}, {ran}): {a['rungs']} of its {a['of_rungs']} rung FIDs have a table entry, and they differ from "
             f"it by {100 * (a['mean_relative_difference'] or 0):.3f}% on average (max {100 * (a['max_relative_difference'] or 0):.3f}%). "
             f"Replayed over the real run's own rung results and durations, the sweep's strategy proposes and stops "
             f"{'**the same**' if d['match'] else '**different**'} trials:", "",
             "| trial | real: configuration (schedule, T, EMA rate, lr) | real: last step | replayed: configuration | replayed: last step |",
             "|---|---|---|---|---|"]
    replayed = d["replayed"] or []
    for i, (config, step) in enumerate(d["real"]):
        other = replayed[i] if i < len(replayed) else ["-", "-"]
        lines.append(row(i, short(config), step, short(other[0]) if other[0] != "-" else "-", other[1]))
    if d.get("why"):
        lines += ["", f"The replay stopped early: {d['why']}"]
    return lines


def parted(d: Result) -> str:
    """How a replay's decisions differ from a real run's, trial by trial."""
    real, replayed = d["real"], d["replayed"]
    same = sum(a[0] == b[0] for a, b in zip(real, replayed, strict=True))
    moved = sum(a[0] == b[0] and a[1] != b[1] for a, b in zip(real, replayed, strict=True))
    return f"{same} of {len(real)} proposals the same, {moved} of them stopped at another rung"


def tune_check_lines(r: Result) -> list[str]:
    checks = r.get("tune_checks")
    if not checks:
        return ["Replay against Ray Tune's controller: not run in this measurement (`--tune-check`)."]
    lines = ["**Replay against Ray Tune's own controller** (a real `Tuner` with the strategy's searcher and scheduler, "
             f"trials that report the table's rungs after sleeping {checks[0]['scale']:g} x their recorded seconds and "
             "checkpoint their rung for pauses; `bench/_tune_check.py`), trial by trial:", "",
             "| problem | strategy | seed | trials | same proposals and stops as the replay | trials stopped early (real) |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        d = c["decisions"]
        verdict = "**yes**" if d["match"] else f"**no**: {d.get('why') or parted(d)}"
        lines.append(row(c["problem"], f"`{c['strategy']}`", c["seed"], c["trials"], verdict, len(d.get("real_stops") or [])))
    return lines


def section(r: Result) -> list[str]:
    """Per problem: the strategies' fair ratios, per-seed ratios, anytime figures, rank fidelity and noise."""
    lines = ["## Sweep efficiency (time to the same target, over seeds)", "",
             f"Tabular replay: each problem's discrete space trained once to the full budget (every rung's FID on 64 "
             f"samples, its bootstrap std, KID, train and eval seconds), then every strategy replayed over that table "
             f"for {r['seeds']} seeds with {r['workers']} trials at a time and a simulated clock (`bench/_replay.py`). "
             f"Target per seed: the best FID of a full-budget random search of {r['random_trials']} trials "
             f"+{100 * r['tolerance']:.0f}%; ratio: a strategy's trial-steps to its own first report at or below the "
             f"target / random search's. Every strategy may spend random search's whole budget. ASHA: grace "
             f"{r['grace']} steps, reduction factor {r['reduction_factor']:g}; TPE after {r['startup']} random trials. "
             "Wall time is the simulated clock: the table's training and evaluation seconds, without Ray's and MLflow's "
             "per-trial overhead. Ours is checked against a real sweep below, and ours and BOHB (whose synchronous "
             "HyperBand the replay drives through a stand-in for Tune's controller, `bench/_bohb.py`) against Tune's own "
             "controller.", "",
             f"![anytime curves]({'docs/' + r['plot']})", ""]
    lines += check_lines(r) + [""] + tune_check_lines(r) + [""]
    for name, prob in r["problems"].items():
        build = prob["table_build"]
        lines += [f"### {name}: {prob['configurations']} configurations, budget {prob['budget_steps']:,} trial-steps", "",
                  f"Table: {build.get('trainings', '?')} trainings (EMA rates as one bank) in {build.get('seconds', 0) / 60:.0f} "
                  f"minutes of wall time at `nice -n 19` on a shared, loaded {build.get('cpu', '?')} "
                  f"({build.get('torch_threads', '?')} thread), built by `python -m bench._efficiency_table {name}`.", ""]
        lines += strategy_table(prob, r["strategies"]) + ["", "Per-seed ratios (trial-steps to target / random's):", ""]
        lines += per_seed_table(prob) + ["", "Anytime: mean best FID so far (lower is better):", ""]
        lines += anytime_table(prob) + ["", "Rank fidelity and the rung FID's noise:", ""]
        lines += fidelity_table(prob) + ["", "What stands in the way of the target:", ""] + obstacles(prob) + [""]
    return lines


def summary(r: Result) -> str:
    means = {name: p["strategies"][OURS]["steps_ratio"]["mean"] for name, p in r["problems"].items()}
    cell = ", ".join(f"{name} **{fmt(m)}**" for name, m in means.items())
    worst = None if None in means.values() else max(means.values())
    return row(f"sweep efficiency (time to the same target, mean of {r['seeds']} seeds)", "ASHA + TPE",
               "full-budget random search", cell, TARGET, TARGET.verdict(worst))


BENCHMARK = Benchmark(
    name="efficiency",
    title="Sweep efficiency (time to the same target, over seeds)",
    module="bench.bench_efficiency",
    order=70,
    section=section,
    # The replay is CPU-seconds; the real check runs a 6-trial digits sweep (minutes), the Tune checks 3 x 12
    # table-backed trials (minutes).
    args=Args(full="--seeds 10 --real-check --tune-check", quick="--seeds 2"),
    takes_device=False,
    target=TARGET,
    summary=summary,
)


if __name__ == "__main__":
    main()
