"""The anytime curves of the efficiency benchmark as a PNG: best FID so far against trial-steps, one panel per
problem, each strategy's mean over seeds with its min-max band, and the mean target (random search's best + 5%)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 -- after choosing the non-interactive backend


def plot(result: dict[str, Any], path: Path) -> None:
    """Write the curves of every problem in ``result`` (``bench.bench_efficiency``'s JSON) to ``path``."""
    problems = result["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.5), squeeze=False)
    for ax, (name, prob) in zip(axes[0], problems.items(), strict=True):
        budgets = list(range(prob["every_steps"], prob["budget_steps"] + 1, prob["every_steps"]))
        for strategy, res in prob["strategies"].items():
            band = res["curve"]
            xs = [b for b, m in zip(budgets, band["mean"], strict=True) if m is not None]
            mean = [m for m in band["mean"] if m is not None]
            (line,) = ax.plot(xs, mean, label=strategy, linewidth=2.2 if strategy.endswith("asha_tpe") else 1.2)
            low = [v for v in band["min"] if v is not None]
            high = [v for v in band["max"] if v is not None]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.12)
        ax.axhline(prob["targets"]["mean"], color="black", linestyle="--", linewidth=0.8, label="target (mean)")
        ax.set(title=f"{name}: {prob['configurations']} configurations, {result['seeds']} seeds",
               xlabel="trial-steps (training steps summed over trials)", ylabel="best FID so far", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
