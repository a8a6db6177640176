"""Re-create the README screenshots from a finished sweep with headless chromium (Debian's `chromium`):

    python docs/screenshots.py --tracking-uri sqlite:////tmp/smoke/mlflow.db --experiment smoke \
        --report /tmp/smoke/ray_results/smoke/sweep_report.html

starts `mlflow server` on 127.0.0.1 against the sweep's store and writes docs/mlflow_runs.png (the runs
list: the trial runs sorted by their last FID), docs/mlflow_artifacts.png (the best trial's artifacts page,
a sample grid selected) and docs/report.png (the HTML report).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlencode

from mlflow.tracking import MlflowClient

from sweep.ui import mlflow_server

DOCS = Path(__file__).resolve().parent


def screenshot(url: str, out: Path, budget_ms: int, size: str = "1400,900") -> None:
    """One page, rendered by headless chromium after ``budget_ms`` of virtual time."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: chromium not found; install it with `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=300)
    print(f"{out}: {url}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True, help="the sweep's MLflow store, sqlite:///...")
    p.add_argument("--experiment", default="smoke")
    p.add_argument("--report", type=Path, required=True, help="the sweep's sweep_report.html")
    p.add_argument("--out", type=Path, default=DOCS)
    p.add_argument("--budget-ms", type=int, default=20_000, help="virtual time chromium gives each page to render")
    args = p.parse_args(argv)
    if not args.tracking_uri.startswith("sqlite:///") or not Path(args.tracking_uri[len("sqlite:///"):]).is_file():
        sys.exit(f"error: no SQLite MLflow store at {args.tracking_uri}")
    if not args.report.is_file():
        sys.exit(f"error: no report at {args.report}; build it with `python -m sweep.report NAME`")
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"error: no experiment {args.experiment!r} in {args.tracking_uri}")
    parents = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` IS NULL", order_by=["attributes.start_time DESC"], max_results=1)
    best_run = parents[0].data.tags.get("best_run_id") if parents else None
    if not best_run:
        sys.exit("error: the sweep has no finished parent run with a best trial")
    grids = sorted(a.path for a in client.list_artifacts(best_run, "samples"))
    store = Path(args.tracking_uri[len("sqlite:///"):])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as logs, mlflow_server(args.tracking_uri, store.parent / "mlartifacts", Path(logs) / "server.log") as url:
        eid = experiment.experiment_id
        trials_by_fid = urlencode({"workflowType": "machine_learning", "searchFilter": "metrics.fid > 0",
                                   "orderByKey": "metrics.`fid`", "orderByAsc": "true"}, quote_via=quote)
        screenshot(f"{url}/#/experiments/{eid}/runs?{trials_by_fid}", args.out / "mlflow_runs.png", args.budget_ms)
        artifact = f"/{grids[-1]}" if grids else ""
        screenshot(f"{url}/#/experiments/{eid}/runs/{best_run}/artifacts{artifact}?workflowType=machine_learning", args.out / "mlflow_artifacts.png", args.budget_ms)
    screenshot(args.report.resolve().as_uri(), args.out / "report.png", args.budget_ms, size="1400,2400")
    return 0


if __name__ == "__main__":
    sys.exit(main())
