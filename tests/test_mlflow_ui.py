"""After the smoke sweep, `mlflow server` on 127.0.0.1 serves what a user browses: the experiment, the
parent run and its child runs, each trial's FID history, the sample-grid PNGs and the sweep report."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import store_uri, sweep_runs

from sweep.report.publish import REPORT_FILE
from sweep.ui import mlflow_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ui(smoke_sweep, tmp_path_factory):
    """The server's base URL and the sweep's runs as MlflowClient reads them from the store directly."""
    work, _ = smoke_sweep
    log = tmp_path_factory.mktemp("mlflow_server") / "server.log"
    with mlflow_server(store_uri(work), work / "mlartifacts", log) as url:
        yield url, sweep_runs(work, "smoke")


def get(url: str, route: str, **query: str) -> bytes:
    with urllib.request.urlopen(f"{url}{route}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        assert response.status == 200
        return response.read()


def api(url: str, route: str, body: dict | None = None, **query: str) -> dict:
    if body is None:
        return json.loads(get(url, f"/api/2.0/mlflow/{route}", **query))
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_server_is_bound_to_loopback_and_serves_the_ui(ui):
    url, _ = ui
    assert url.startswith("http://127.0.0.1:")
    assert b"<title>MLflow</title>" in get(url, "/")


def test_experiment_parent_and_child_runs_are_served(ui):
    url, (_, parents, children) = ui
    experiment = api(url, "experiments/get-by-name", experiment_name="smoke")["experiment"]
    runs = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    served_parents = [rid for rid, t in tags.items() if "mlflow.parentRunId" not in t]
    assert served_parents == [parents[0].info.run_id]
    served_children = {rid for rid, t in tags.items() if t.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert served_children == {c.info.run_id for c in children} and len(served_children) >= 6


def test_fid_history_of_every_trial_is_served(ui):
    url, (client, _, children) = ui
    for child in children:
        served = api(url, "metrics/get-history", run_id=child.info.run_id, metric_key="fid")["metrics"]
        stored = client.get_metric_history(child.info.run_id, "fid")
        assert sorted((m["step"], m["value"]) for m in served) == sorted((m.step, m.value) for m in stored)
        assert len(served) >= 1


def served_tags(url: str, run_id: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in api(url, "runs/get", run_id=run_id)["run"]["data"]["tags"]}


def test_sample_grids_and_report_are_served(ui, tmp_path):
    url, (client, parents, children) = ui
    child = children[0]
    listed = api(url, "artifacts/list", run_id=child.info.run_id, path="images")["files"]
    pngs = [f["path"] for f in listed if f["path"].startswith("images/samples+step+") and f["path"].endswith(".png")]
    assert pngs and len(pngs) == len(client.get_metric_history(child.info.run_id, "fid"))
    assert served_tags(url, child.info.run_id).get("mlflow.loggedImages") == "True"  # MLflow's image comparison view
    served = get(url, "/get-artifact", path=pngs[-1], run_uuid=child.info.run_id)
    assert served.startswith(PNG_MAGIC)
    assert served == Path(client.download_artifacts(child.info.run_id, pngs[-1], str(tmp_path))).read_bytes()
    parent_files = [f["path"] for f in api(url, "artifacts/list", run_id=parents[0].info.run_id)["files"]]
    assert REPORT_FILE in parent_files
    assert b"Sweep report: smoke" in get(url, "/get-artifact", path=REPORT_FILE, run_uuid=parents[0].info.run_id)
