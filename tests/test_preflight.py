"""Problems found before any trial starts: one line, exit 1, and Ray is never started."""
import socket
from pathlib import Path

import pytest

from sweep.launch import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "search_spaces" / "smoke.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray must not start when a pre-flight check fails")

    monkeypatch.setattr(ray, "init", forbidden)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["tracking.tracking_uri=http://127.0.0.1:{port}"], "tracking.tracking_uri: MLflow server http://127.0.0.1:{port} is unreachable"),
        (["data.dataset=mnist", "data.download=false", "data.root={tmp}/no_data"], "dataset 'mnist' not found under {tmp}/no_data"),
        (["eval.inception_weights={tmp}/missing.pth"], "{tmp}/missing.pth"),
        (["sweep.storage_path=/proc/forbidden"], "sweep.storage_path: cannot write to /proc/forbidden"),
        (["sweep.resources_per_trial.gpu=1"], "sweep.resources_per_trial.gpu: 1.0 GPUs per trial, but this machine has 0"),
    ],
    ids=["mlflow-unreachable", "dataset-missing", "weights-missing", "storage-unwritable", "no-gpu"],
)
def test_preflight_failure_is_one_line_and_exit_1(tmp_path, capsys, no_ray, monkeypatch, overrides, expected):
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    args = [SMOKE, "--set", f"sweep.storage_path={tmp_path / 'ray_results'}"]
    for item in overrides:
        args += ["--set", item.format(port=port, tmp=tmp_path)]
    if not any(o.startswith("tracking.") for o in overrides):
        args += ["--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert expected.format(port=port, tmp=tmp_path) in err, err
    assert "Traceback" not in err


def test_existing_sweep_without_resume_is_refused(tmp_path, capsys, no_ray):
    (tmp_path / "ray_results" / "smoke").mkdir(parents=True)
    (tmp_path / "ray_results" / "smoke" / "tuner.pkl").write_bytes(b"")  # what Ray leaves of a sweep it started
    args = [SMOKE, "--storage-path", str(tmp_path / "ray_results"), "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "a sweep named 'smoke' already exists" in err and "pass --resume" in err
