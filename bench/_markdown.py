"""Markdown pieces shared by the benchmarks' BENCHMARKS.md sections and summary rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench._benchmark import Result, Target


def row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ratio_list(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def peer_table(r: Result, heading: str, peer: str, label: str, peer_key: str, target: Target,
               digits: int = 2) -> list[str]:
    """A section's heading and its ours-vs-peer throughput table (ours/peer = the JSON's ``ratio``)."""
    return [
        f"## {heading}",
        "",
        f"| | ours | {peer} | ours/{peer} | target | status |",
        "|---|---|---|---|---|---|",
        row(label, f"{r['ours_img_per_s']:.{digits}f}", f"{r[peer_key]:.{digits}f}", f"**{r['ratio']:.2f}x**", target,
            target.verdict(r["ratio"], r["paired_ratios"])),
    ]


def throughput_summary(label: str, peer_key: str, peer: str, target: Target) -> Callable[[Result], str]:
    """The summary row of an ours-vs-peer throughput benchmark."""
    def summary(r: Result) -> str:
        return row(label, f"{r['ours_img_per_s']:.3g}", f"{r[peer_key]:.3g} ({peer})", f"**{r['ratio']:.2f}x**", target,
                   target.verdict(r["ratio"], r.get("paired_ratios")))
    return summary
