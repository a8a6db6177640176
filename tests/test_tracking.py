"""The tracker seam: the queue that lets a trial train on while the tracking store is away, the MLflow implementation's
trial runs (one per trial, reopened after a restart), images by key and step, and credentials never shown."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from sweep.tracking import STATUS_TAG, QueuedRun, open_tracker
from sweep.uris import redact


class FlakyRun:
    """A run whose store is away for the first ``away`` calls."""

    run_id = "r1"

    def __init__(self, away: int) -> None:
        self.away, self.calls = away, []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.away > 0:
            self.away -= 1
            raise ConnectionError("Connection refused")
        self.calls.append((metrics, step))


def test_records_wait_while_the_store_is_away_and_arrive_once_in_order():
    run = FlakyRun(away=3)
    queued = QueuedRun(lambda: run)
    for step in (1, 2, 3):
        queued.log_metrics({"fid": float(step)}, step)
    assert run.calls == [] and len(queued.pending) == 3 and queued.run_id == "r1"
    assert queued.flush() and run.calls == [({"fid": 1.0}, 1), ({"fid": 2.0}, 2), ({"fid": 3.0}, 3)]
    assert queued.pending == [] and queued.flush()


def test_the_run_is_opened_when_the_store_first_answers():
    attempts = []

    def open_run() -> FlakyRun:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("Connection refused")
        return FlakyRun(away=0)

    queued = QueuedRun(open_run)
    assert not queued.flush() and queued.run_id is None
    queued.log_metrics({"fid": 9.0}, 100)
    assert queued.run_id is None and len(queued.pending) == 1
    queued.log_metrics({"fid": 8.0}, 200)
    assert queued.run_id == "r1" and queued.pending == []


def test_the_queue_is_bounded_and_drops_metrics_first():
    queued = QueuedRun(lambda: FlakyRun(away=10**6), limit=3)
    queued.set_tags({"a": 1})
    for step in range(5):
        queued.log_metrics({"fid": 1.0}, step)
    assert len(queued.pending) == 3 and queued.dropped == 3
    assert [name for name, _ in queued.pending] == ["set_tags", "log_metrics", "log_metrics"]


def test_one_run_per_trial_reopened_after_a_restart(tmp_path):
    tracker = open_tracker(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = tracker.experiment("x")
    parent = tracker.start_sweep(experiment, "x", False, {})
    first = tracker.trial_run(experiment, parent.run_id, "t1", "trial 1", {"train.lr": 0.001}, {})
    first.finish("failed", "killed")
    again = tracker.trial_run(experiment, parent.run_id, "t1", "trial 1", {"train.lr": 0.001}, {"restored_at_step": "100"})
    assert again.run_id == first.run_id
    record = tracker.get_run(first.run_id)
    assert record.status == "RUNNING" and record.tags[STATUS_TAG] == "running" and record.tags["restored_at_step"] == "100"
    assert [r.run_id for r in tracker.children(tracker.get_run(parent.run_id))] == [first.run_id]


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def test_images_by_key_and_step(tmp_path):
    tracker = open_tracker(f"sqlite:///{tmp_path / 'm.db'}")
    run = tracker.start_sweep(tracker.experiment("x"), "x", False, {})
    for step in (100, 200):
        run.log_image(_png(step // 100), "samples", step)
    run.log_image(_png(9), "interpolation/noise_slerp", 200)
    assert tracker.image_steps(run.run_id, "samples") == {100, 200}
    assert tracker.images(run.run_id, "interpolation/noise_slerp") == {200: _png(9)}
    assert not tracker.has_artifact(run.run_id, "checkpoints/checkpoint_best.pt")


@pytest.mark.parametrize("uri,shown", [
    ("https://alice:s3cret@mlflow.example.com/x", "https://***@mlflow.example.com/x"),
    ("http://host:5000/?token=abc&run=1", "http://host:5000/?token=***&run=1"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
])
def test_credentials_are_redacted(uri, shown):
    assert redact(uri) == shown and redact(f"MLflow: {uri}, experiment x") == f"MLflow: {shown}, experiment x"
