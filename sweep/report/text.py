"""The sweep's summary printed at the end of ``sweep.launch``: a table of trials, the best trial and what it found
without retraining, the counts, and where the results live."""
from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

from sweep.report.model import Sweep
from sweep.report.render import no_retrain_parts, short


def print_summary(sweep: Sweep, where: list[str]) -> None:
    """The table of trials (best first), the best trial, the counts, failures, and the ``where`` lines."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"sweep {sweep.name}: {len(sweep.trials)} trials")
    for column in ("trial", "status", "step", "best FID", *[d.path.rsplit(".", 1)[-1] for d in sweep.dimensions]):
        table.add_column(column)
    for t in sweep.ranked():
        table.add_row(t.trial_id, t.status, str(t.last_step), f"{t.best_fid:.2f}" if math.isfinite(t.best_fid) else "-",
                      *[short(t.params.get(d.path, "-")) for d in sweep.dimensions])
    console.print(table)
    best = sweep.best
    if best:
        console.print(f"[bold]best FID {best.best_fid:.2f}[/] (trial {best.trial_id}, step {best.best_step}): {best.params}")
        for part in no_retrain_parts(best):
            console.print(f"  best {part}")
    console.print(f"trials: {sweep.count('completed')} completed, {sweep.count('pruned')} pruned by ASHA, {sweep.count('failed')} failed")
    for t in sweep.trials:
        if t.error:
            console.print(f"  failed {t.trial_id}: {t.error}")
    for line in where:
        console.print(line)
