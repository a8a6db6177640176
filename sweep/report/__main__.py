"""``python -m sweep.report NAME``: a self-contained HTML report of a finished or running sweep, built from its
tracked runs, written next to the Ray results and attached to the sweep's parent run.

It answers: which trial is best (table, sample grids, the top trials side by side), which hyperparameters matter
(Optuna's parameter importance and parallel coordinates), and did early stopping throw away a winner (FID curves
per trial, rank fidelity per rung, pruned trials that were ahead of the winner when they were stopped).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sweep.report.collect import from_tracker
from sweep.report.publish import REPORT_FILE, default_output, publish
from sweep.tracking import TrackingError, check_reachable, open_tracker, resolve_tracking_uri
from sweep.uris import redact


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("name", help="the sweep's name (the YAML file's `name`)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep's name)")
    p.add_argument("--storage-path", help="Ray results folder (default: the sweep's sweep.storage_path)")
    p.add_argument("--out", type=Path, help=f"output HTML file (default: <storage-path>/NAME/{REPORT_FILE})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise TrackingError(f"no MLflow store at {redact(uri)}; pass --tracking-uri")
        check_reachable(uri, "--tracking-uri")
        tracker = open_tracker(uri)
        sweep, cfg = from_tracker(tracker, args.experiment or args.name, args.name)
        out = args.out or default_output(args.storage_path or cfg.sweep.storage_path, args.name)
        path, fidelity = publish(tracker, sweep, out)
    except TrackingError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"Report of sweep {args.name!r} ({len(sweep.trials)} trials): {path}")
    for r in fidelity:
        print(f"  rank fidelity at step {r.step}: {r.label()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
