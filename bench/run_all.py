"""Run every benchmark and write BENCHMARKS.md.

    OMP_NUM_THREADS=2 python -m bench.run_all --quick     # small counts, minutes on a CPU
    python -m bench.run_all --only train --reuse-json      # rerun one, take the others from bench/results
    python -m bench.run_all --render-only                  # rewrite BENCHMARKS.md from bench/results alone

The benchmarks are the ``BENCHMARK`` definitions of the ``bench/bench_*.py`` modules (``bench._benchmark``).
Each runs in its own process (``python -m MODULE ... --out NAME.json``); this script keeps their JSON and the
environment of the run in ``--json-dir`` and writes the whole of BENCHMARKS.md from them (nothing in it is
hand-edited: rerun to update): ratios ours/peer next to their targets, the exact command that reproduces each
figure, and a note for every figure that is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench._benchmark import Benchmark, Result, discover
from bench._common import cpu_model
from bench._environment import FILE_NAME, Environment, cores, load_average, now, versions
from bench._report import render

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Warning", "warnings.warn", "USDT:", "ERROR:", "gpuGetDeviceCount")  # left out of the echoed output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: minutes on a CPU")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--json-dir", type=Path, default=ROOT / "bench" / "results",
                   help="where each benchmark's JSON and the run's environment are kept (default: bench/results)")
    p.add_argument("--reuse-json", action="store_true",
                   help="take a benchmark's result from --json-dir when its JSON is already there (resume a long run); "
                        "with --only, the named benchmarks run anew and the others are taken from their JSON")
    p.add_argument("--only", nargs="*", metavar="NAME", default=None,
                   help="run only these benchmarks (the others are left out of the report, or reused with --reuse-json)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: write the report from --json-dir's JSON and recorded environment")
    args = p.parse_args(argv)
    if args.render_only and args.only is not None:
        p.error("--render-only runs nothing: it takes no --only")
    return args


def run_one(b: Benchmark, argv: list[str], json_path: Path, env: dict[str, str]) -> tuple[Result | None, str]:
    """Run ``b`` in its own process: (its JSON, "") or (None, why it failed)."""
    cmd = [sys.executable, "-m", b.module, *argv, "--out", str(json_path)]
    print(f"$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    shown = [line for line in (proc.stdout + proc.stderr).splitlines() if not any(n in line for n in NOISE)]
    print("\n".join(shown[-12:]), flush=True)
    print(f"[{b.name}: {time.perf_counter() - start:.0f} s]", flush=True)
    if proc.returncode != 0 or not json_path.is_file():
        return None, f"exit status {proc.returncode}:\n" + "\n".join(shown[-20:])
    return json.loads(json_path.read_text()), ""


def measure(benchmarks: list[Benchmark], args: argparse.Namespace) -> tuple[Environment, dict[str, Result], dict[str, str]]:
    """Run the chosen benchmarks (reusing JSON where asked): the run's environment, results and errors.

    A run that started no benchmark is described by the environment recorded with the JSON it reused."""
    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = torch.cuda.get_device_name(torch.device(args.device if args.device != "auto" else "cuda")) if cuda else cpu_model()
    threads = os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    start, load_start = time.perf_counter(), load_average()
    results: dict[str, Result] = {}
    errors: dict[str, str] = {}
    measured: list[str] = []
    started = False
    for b in benchmarks:
        json_path = args.json_dir / f"{b.name}.json"
        chosen = not args.only or b.name in args.only
        if args.reuse_json and json_path.is_file() and not (args.only and chosen):
            results[b.name] = json.loads(json_path.read_text())
            print(f"[{b.name}: reused {json_path}]", flush=True)
        elif not chosen:
            errors[b.name] = "skipped (--only)"
        else:
            started = True
            result, error = run_one(b, b.argv(args.quick, cuda, args.device), json_path, env)
            if result is None:
                errors[b.name] = error
            else:
                results[b.name] = result
                measured.append(b.name)
    if not started and (args.json_dir / FILE_NAME).is_file():
        return Environment.read(args.json_dir), results, errors
    run = Environment(date=now(), device=device, cuda=cuda, device_arg=args.device, quick=args.quick, threads=threads,
                      cores=cores(), load_start=load_start, load_end=load_average(), seconds=time.perf_counter() - start,
                      versions=versions(), measured=measured)
    run.write(args.json_dir)
    return run, results, errors


def read_results(benchmarks: list[Benchmark], json_dir: Path) -> tuple[dict[str, Result], dict[str, str]]:
    """Every benchmark's JSON in ``json_dir``; an error for each one that has none."""
    results, errors = {}, {}
    for b in benchmarks:
        path = json_dir / f"{b.name}.json"
        if path.is_file():
            results[b.name] = json.loads(path.read_text())
        else:
            errors[b.name] = f"no {path.name} in {json_dir.name}/ (--render-only)"
    return results, errors


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    benchmarks = discover()
    unknown = sorted(set(args.only or ()) - {b.name for b in benchmarks})
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(b.name for b in benchmarks)}")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        if not (args.json_dir / FILE_NAME).is_file():
            sys.exit(f"--render-only: no {FILE_NAME} in {args.json_dir} (it is written by a run that measures)")
        results, errors = read_results(benchmarks, args.json_dir)
        run = Environment.read(args.json_dir)
    else:
        run, results, errors = measure(benchmarks, args)
    args.out.write_text(render(benchmarks, results, errors, run))
    print(f"wrote {args.out} (JSON in {args.json_dir})")
    if errors and not args.only:
        sys.exit(1)


if __name__ == "__main__":
    main()
