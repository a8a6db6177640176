"""The anytime curves of the efficiency benchmark as a PNG: best FID so far against trial-steps, one panel per
problem, each strategy's mean over seeds with its min-max band, and the mean target (random search's best + 5%)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- after choosing the non-interactive backend

BANDED = ("random", "asha_tpe")  # the baseline and ours get a min-max band; the others a line, for legibility


def plot(result: dict[str, Any], path: Path) -> None:
    """Write the curves of every problem in ``result`` (``bench.bench_efficiency``'s JSON) to ``path``."""
    problems = result["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.8), squeeze=False)
    for ax, (name, prob) in zip(axes[0], problems.items(), strict=True):
        budgets = list(range(prob["every_steps"], prob["budget_steps"] + 1, prob["every_steps"]))
        lowest = math.inf
        for strategy, res in prob["strategies"].items():
            band = res["curve"]
            shown = [(b, m, lo, hi) for b, m, lo, hi in zip(budgets, band["mean"], band["min"], band["max"], strict=True)
                     if m is not None]
            xs, mean, low, high = (list(c) for c in zip(*shown, strict=True))
            (line,) = ax.plot(xs, mean, label=strategy, linewidth=2.4 if strategy in BANDED else 1.2,
                              linestyle="-" if strategy in BANDED or "asha" in strategy else "--")
            if strategy in BANDED:
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
            lowest = min(lowest, *low)
        target = prob["targets"]["mean"]
        ax.axhline(target, color="black", linestyle=":", linewidth=1.0, label="target (mean over seeds)")
        ax.set_ylim(0.97 * lowest, 1.8 * target)
        ax.set(title=f"{name}: {prob['configurations']} configurations, mean of {result['seeds']} seeds (band: min-max)",
               xlabel="trial-steps (training steps summed over trials)", ylabel="best FID so far")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
