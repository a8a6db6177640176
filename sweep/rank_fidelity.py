"""Rank fidelity: does the FID ranking at an early rung predict the final ranking?

The sweep prunes on short runs and assumes the ranking holds. For each rung, Spearman's rho between the
trials' FIDs at that rung and their FIDs at the final step, over the trials that reached the final step.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy.stats import spearmanr

MIN_TRIALS = 3


@dataclass(frozen=True)
class RungFidelity:
    step: int
    n: int  # trials that reached the end and have a FID at this rung
    rho: float | None  # None: not defined (too few trials, or a constant ranking)
    reason: str = ""

    def label(self) -> str:
        return f"{self.rho:+.3f}" if self.rho is not None else f"n/a ({self.reason})"


def rank_fidelity(histories: Mapping[str, Mapping[int, float]], final_step: int | None = None) -> list[RungFidelity]:
    """One entry per rung before ``final_step`` (default: the largest step any trial reached).

    ``histories`` maps a trial to its ``{step: fid}``; non-finite FIDs are left out."""
    clean = {t: {int(s): float(v) for s, v in h.items() if math.isfinite(float(v))} for t, h in histories.items()}
    steps = sorted({s for h in clean.values() for s in h})
    if not steps:
        return []
    final = max(steps) if final_step is None else final_step
    finishers = {t: h for t, h in clean.items() if final in h}
    out = []
    for step in (s for s in steps if s < final):
        pairs = [(h[step], h[final]) for h in finishers.values() if step in h]
        if len(pairs) < MIN_TRIALS:
            out.append(RungFidelity(step, len(pairs), None, f"{len(pairs)} trials reached the end, need {MIN_TRIALS}"))
            continue
        rung, last = zip(*pairs)
        if len(set(rung)) == 1 or len(set(last)) == 1:
            out.append(RungFidelity(step, len(pairs), None, "all FIDs tie"))
            continue
        rho = float(spearmanr(rung, last).statistic)
        out.append(RungFidelity(step, len(pairs), rho if math.isfinite(rho) else None, "" if math.isfinite(rho) else "undefined"))
    return out
