"""What ``run_all`` knows about a benchmark: how to run it, its target, and how to write it up.

Each ``bench/bench_*.py`` module declares one ``BENCHMARK = Benchmark(...)`` next to its code;
``discover`` collects them, so adding a benchmark is adding one module: its ``main()`` measures and writes
JSON with ``write_result(result, args.out)``, its ``BENCHMARK`` says how to run it and renders that JSON.
Then ``python -m bench.run_all --only NAME --reuse-json`` measures it and rewrites BENCHMARKS.md; commit
its ``bench/results/NAME.json`` with it (removing a benchmark is deleting its module and its JSON).
"""

from __future__ import annotations

import importlib
import pkgutil
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]  # a benchmark's JSON


@dataclass(frozen=True)
class Target:
    """A bound on a headline figure: ours/peer throughput at least ``bound``, or (``at_most``) a cost at most it."""

    bound: float
    at_most: bool = False
    percent: bool = False  # an at-most bound written as a percentage

    def __str__(self) -> str:
        if not self.at_most:
            return f">= {self.bound}x"
        return f"<= {100 * self.bound:.0f}%" if self.percent else f"<= {self.bound:.2f}"

    def verdict(self, figure: float | None, paired: Sequence[float] | None = None) -> str:
        """``figure`` against the bound (None: never reached); per-repetition ``paired`` figures that span
        the bound make the verdict inconclusive."""
        if self.at_most:
            return "meets target" if figure is not None and figure <= self.bound else "**ABOVE TARGET**"
        verdict = "meets target" if figure is not None and figure >= self.bound else "**BELOW TARGET**"
        if paired and min(paired) <= self.bound <= max(paired):
            verdict += " (inconclusive: the per-repetition ratios span the target)"
        return verdict


@dataclass(frozen=True)
class Args:
    """A benchmark's arguments for a full and a ``--quick`` run; on CUDA the ``cuda_*`` ones where given."""

    full: str = ""
    quick: str = ""
    cuda_full: str | None = None
    cuda_quick: str | None = None

    def select(self, quick: bool, cuda: bool) -> list[str]:
        chosen = (self.cuda_quick if quick else self.cuda_full) if cuda else None
        if chosen is None:
            chosen = self.quick if quick else self.full
        return shlex.split(chosen)


@dataclass(frozen=True)
class Benchmark:
    """One section of BENCHMARKS.md: ``python -m module ARGS --out NAME.json``, then its JSON rendered."""

    name: str  # bench/results/NAME.json and ``run_all --only NAME``
    title: str  # the section's heading when the benchmark was not measured
    module: str  # run as ``python -m module``
    order: int  # position in BENCHMARKS.md (ascending)
    section: Callable[[Result], list[str]]  # its section's markdown lines, from its JSON
    args: Args = Args()
    takes_device: bool = True  # whether it takes ``--device``
    target: Target | None = None
    summary: Callable[[Result], str] | None = None  # its row of the summary table

    def argv(self, quick: bool, cuda: bool, device: str) -> list[str]:
        """Its arguments (without ``--out``) for this mode and device."""
        return self.args.select(quick, cuda) + (["--device", device] if self.takes_device else [])


def discover() -> list[Benchmark]:
    """The ``BENCHMARK`` of every ``bench/bench_*.py`` module, in report order."""
    found = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("bench_"):
            found.append(importlib.import_module(f"{__package__}.{info.name}").BENCHMARK)
    return sorted(found, key=lambda b: b.order)
