"""The sweep report: on a hand-built MLflow store whose numbers are known, and on the smoke sweep."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys

import pytest
import yaml
from helpers import SMOKE_SPACE, store_uri, sweep_runs
from mlflow.tracking import MlflowClient
from PIL import Image
from plotly.offline import get_plotlyjs

from sweep.config import load_sweep
from sweep.report.analyse import rank_fidelity
from sweep.report.collect import from_tracker
from sweep.report.publish import REPORT_FILE, RHO_METRIC, publish
from sweep.tracking import STATUS_TAG, open_tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# trial: (status, {step: fid}, params). Finishers a-d rank b, a, c, d at step 300; at step 100 they rank
# a, b, c, d (one swap: rho = 1 - 6*2/(4*15) = 0.8); at step 200 d, c, b, a (d^2 = 4+4+1+9: rho = -0.8).
# Pruned e was ahead of the winner b at step 100 (40 < 60): a possible lost winner; pruned f was not.
TRIALS = {
    "a": ("completed", {100: 50.0, 200: 75.0, 300: 20.0}, ("cosine", 100, 3e-4, 0.0, 1, 0.9)),
    "b": ("completed", {100: 60.0, 200: 65.0, 300: 10.0}, ("linear", 200, 1e-3, 0.1, 2, 0.95)),
    "c": ("completed", {100: 70.0, 200: 55.0, 300: 30.0}, ("cosine", 400, 2e-3, 0.2, 4, 0.99)),
    "d": ("completed", {100: 80.0, 200: 45.0, 300: 40.0}, ("linear", 100, 5e-4, 0.3, 1, 0.9)),
    "e": ("pruned", {100: 40.0}, ("cosine", 200, 8e-4, 0.05, 2, 0.95)),
    "f": ("pruned", {100: 90.0}, ("linear", 400, 3e-3, 0.25, 4, 0.99)),
}
PATHS = ["diffusion.schedule", "diffusion.timesteps", "train.lr", "model.dropout", "model.num_heads", "train.ema_rates"]


COLORS = {(name, step): 10 * i + step // 100 for i, (name, (_, fids, _)) in enumerate(TRIALS.items()) for step in fids}


def _png(color: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (color, 0, 0)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A finished sweep written straight into MLflow as the runner and trainable would, then published."""
    work = tmp_path_factory.mktemp("synthetic")
    tracker = open_tracker(store_uri(work))
    experiment = tracker.experiment("synthetic")
    parent = tracker.start_sweep(experiment, "synthetic", False, {}).run_id
    tracker.run(parent).log_text(yaml.safe_dump(load_sweep(SMOKE_SPACE).model_dump(), sort_keys=False), "resolved_space.yaml")
    for name, (status, fids, values) in TRIALS.items():
        run = tracker.trial_run(experiment, parent, name, f"trial_{name}", dict(zip(PATHS, values)), {})
        for step, fid in fids.items():
            run.log_metrics({"fid": fid}, step)
        run.set_tags({STATUS_TAG: status})
        for step in fids:
            run.log_image(_png(COLORS[name, step]), "samples", step)
    sweep, _ = from_tracker(tracker, "synthetic", "synthetic")
    out, fidelity = publish(tracker, sweep, work / "ray_results" / "synthetic" / REPORT_FILE)
    return MlflowClient(store_uri(work)), parent, out, fidelity, tracker


def test_rank_fidelity_is_shown_and_logged_on_the_parent_run(synthetic):
    client, parent, out, fidelity, _ = synthetic
    assert [(r.step, r.n) for r in fidelity] == [(100, 4), (200, 4)]
    assert [r.rho for r in fidelity] == [pytest.approx(0.8), pytest.approx(-0.8)]
    logged = {m.step: m.value for m in client.get_metric_history(parent, RHO_METRIC)}
    assert logged == {100: pytest.approx(0.8), 200: pytest.approx(-0.8)}
    page = out.read_text()
    assert "+0.800" in page and "-0.800" in page and "Spearman" in page


def test_rerunning_the_report_does_not_log_rank_fidelity_twice(synthetic, tmp_path):
    client, parent, _, _, tracker = synthetic
    publish(tracker, from_tracker(tracker, "synthetic", "synthetic")[0], tmp_path / REPORT_FILE)
    assert sorted(m.step for m in client.get_metric_history(parent, RHO_METRIC)) == [100, 200]


def test_pruned_trial_ahead_of_the_winner_is_flagged(synthetic):
    page = synthetic[2].read_text()
    flagged = re.search(r"possible lost winners\):</p><ul>(.*?)</ul>", page).group(1)
    assert "trial_e: FID 40.00 at step 100, the winner trial_b had 60.00" in flagged
    assert "trial_f" not in flagged


def test_optuna_plots_and_plotly_inlined_once(synthetic):
    page = synthetic[2].read_text()
    assert "Hyperparameter Importances" in page and "Parallel Coordinate" in page
    assert re.search(r"<script[^>]*\bsrc=", page) is None, "the report must not load scripts from the network"
    assert page.count(get_plotlyjs()[:500]) == 1


def _images(section: str) -> list[bytes]:
    return [base64.b64decode(i) for i in re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", section)]


def test_best_trial_grids_embedded_in_step_order(synthetic):
    page = synthetic[2].read_text()
    best = page[page.index("<h2 id='samples'>"):page.index("<h2 id='top'>")]
    assert _images(best) == [_png(COLORS["b", step]) for step in (100, 200, 300)]
    assert best.index("step 100: FID 60.00") < best.index("step 300: FID 10.00")


def test_top_trials_side_by_side_at_the_latest_rung_they_all_reached(synthetic):
    """The four best trials by best FID are b, a, c, d (all finished): their grids at step 300, best first."""
    page = synthetic[2].read_text()
    top = page[page.index("<h2 id='top'>"):page.index('<h2 id="trials">')]
    assert "At step 300" in top
    assert _images(top) == [_png(COLORS[name, 300]) for name in "bacd"]
    assert top.index("trial_b: FID 10.00") < top.index("trial_a: FID 20.00")


def test_report_is_a_parent_run_artifact(synthetic):
    client, parent, out, _, _ = synthetic
    assert REPORT_FILE in [a.path for a in client.list_artifacts(parent)]
    assert out.is_file() and out.parent.name == "synthetic"


# --- the smoke sweep -----------------------------------------------------------------------------


def _children_and_page(work):
    client, parents, children = sweep_runs(work, "smoke")
    page = (work / "ray_results" / "smoke" / REPORT_FILE).read_text()
    return client, parents[0], children, page


def test_sweep_writes_the_report_next_to_ray_results_and_on_the_parent_run(smoke_sweep):
    work, output = smoke_sweep
    client, parent, children, page = _children_and_page(work)
    assert f"Report: {work / 'ray_results' / 'smoke' / REPORT_FILE}" in output
    assert REPORT_FILE in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "warning: sweep report not built" not in output


def test_smoke_report_has_a_curve_and_a_row_per_trial_and_the_best_grids(smoke_sweep):
    work, _ = smoke_sweep
    client, parent, children, page = _children_and_page(work)
    section = page[page.index('<h2 id="curves">'):page.index('<h2 id="compute">')]
    start = section.index("[", section.index("Plotly.newPlot("))
    traces, _ = json.JSONDecoder().raw_decode(section, start)
    expected = {f"{c.data.tags['mlflow.runName']} ({c.data.tags[STATUS_TAG]})": len(client.get_metric_history(c.info.run_id, "fid")) for c in children}
    assert {t["name"]: len(t["x"]) for t in traces} == expected
    for child in children:
        assert f"<td>{child.data.tags['mlflow.runName']}</td><td>{child.data.tags[STATUS_TAG]}</td>" in page
    best = min(children, key=lambda c: min(m.value for m in client.get_metric_history(c.info.run_id, "fid")))
    grids = _images(page[page.index("<h2 id='samples'>"):page.index("<h2 id='top'>")])
    assert len(grids) == len(client.get_metric_history(best.info.run_id, "fid"))
    assert all(g.startswith(PNG_MAGIC) for g in grids)


def test_smoke_report_shows_rank_fidelity_of_every_rung(smoke_sweep):
    work, _ = smoke_sweep
    client, parent, children, page = _children_and_page(work)
    histories = {c.info.run_id: {m.step: m.value for m in client.get_metric_history(c.info.run_id, "fid")} for c in children}
    fidelity = rank_fidelity(histories, 300)
    assert [r.step for r in fidelity] == [100, 200]
    for r in fidelity:
        assert re.search(rf"<td>{r.step}</td><td>{r.n}</td><td>{re.escape(r.label())}</td>", page)
    logged = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, RHO_METRIC)}
    assert logged == {r.step: pytest.approx(r.rho) for r in fidelity if r.rho is not None}


def _report_cli(work, *args):
    cmd = [sys.executable, "-m", "sweep.report", *args, "--tracking-uri", store_uri(work)]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)


def test_cli_regenerates_the_report(smoke_sweep):
    work, _ = smoke_sweep
    path = work / "ray_results" / "smoke" / REPORT_FILE
    before = path.stat().st_mtime_ns
    proc = _report_cli(work, "smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(path) in proc.stdout and path.stat().st_mtime_ns > before
    assert "Sweep report: smoke" in path.read_text()


def test_cli_unknown_sweep_is_a_one_line_error(smoke_sweep):
    work, _ = smoke_sweep
    proc = _report_cli(work, "no-such-sweep")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: no sweep 'no-such-sweep'")
    assert "Traceback" not in proc.stderr
