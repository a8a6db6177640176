"""The head's MLflow store kept in the bucket: a consistent snapshot while it is written, restored on a new head
(or on your machine) and read by MLflow there."""
from __future__ import annotations

import sqlite3
import threading

from mlflow.tracking import MlflowClient

from sweep.store_sync import backup, main, restore


def test_a_snapshot_taken_while_mlflow_writes_restores_into_a_readable_store(tmp_path):
    db = tmp_path / "head" / "mlflow.db"
    db.parent.mkdir()
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    writing = threading.Event()

    def write() -> None:
        for step in range(200):
            client.log_metric(run, "fid", 100.0 - step * 0.1, step=step)
            writing.set()

    writer = threading.Thread(target=write)
    writer.start()
    writing.wait()
    bucket = (tmp_path / "bucket").as_uri() + "/mlflow/mlflow.db"
    backup(db, bucket)
    writer.join()
    backup(db, bucket)  # the periodic snapshot replaces the last one

    local = tmp_path / "here" / "mlflow.db"
    assert restore(bucket, local)
    restored = MlflowClient(f"sqlite:///{local}")
    assert len(restored.get_metric_history(run, "fid")) == 200
    with sqlite3.connect(local) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_restore_never_overwrites_and_reports_an_empty_bucket(tmp_path, capsys):
    bucket = (tmp_path / "bucket").as_uri() + "/mlflow.db"
    existing = tmp_path / "mlflow.db"
    assert main(["restore", bucket, str(tmp_path / "new.db")]) == 0
    assert "nothing at" in capsys.readouterr().out
    existing.write_bytes(b"runs")
    assert main(["restore", bucket, str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"runs"
    assert main(["backup", str(tmp_path / "missing.db"), bucket]) == 1
    assert not restore(bucket, tmp_path / "other.db")
