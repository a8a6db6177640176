"""The MLflow backend store of the cluster's head (a SQLite file) kept in the bucket, so that it survives ``ray
down``: ``backup`` copies a consistent snapshot (SQLite's online backup, safe while the server writes) to a URI,
``restore`` brings it back before the server starts on a new head, or on your machine to browse a finished sweep.

    python -m sweep.store_sync backup  ~/mlflow/mlflow.db s3://BUCKET/mlflow/mlflow.db
    python -m sweep.store_sync restore s3://BUCKET/mlflow/mlflow.db ./mlflow.db
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

from pyarrow import fs as pafs


class StoreSyncError(RuntimeError):
    """A store that cannot be copied; one line."""


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve()))


def backup(db: Path, uri: str) -> None:
    """A consistent snapshot of the SQLite file ``db`` written to ``uri`` (replaced whole, never half-written)."""
    if not db.is_file():
        raise StoreSyncError(f"{db}: no such MLflow store")
    filesystem, path = _filesystem(uri)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / db.name
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as source, closing(sqlite3.connect(snapshot)) as target:
            source.backup(target)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        staging = f"{path}.partial"
        pafs.copy_files(str(snapshot), staging, destination_filesystem=filesystem)
        filesystem.move(staging, path)


def restore(uri: str, db: Path) -> bool:
    """Copy the store at ``uri`` to ``db`` if there is one; an existing ``db`` is never overwritten."""
    if db.exists():
        raise StoreSyncError(f"{db}: already exists; move it away to restore {uri}")
    filesystem, path = _filesystem(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(db.name + ".partial")
    pafs.copy_files(path, str(partial), source_filesystem=filesystem)
    partial.replace(db)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweep.store_sync", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("backup", help="snapshot a SQLite store to a URI")
    up.add_argument("db", type=Path)
    up.add_argument("uri")
    down = sub.add_parser("restore", help="copy a store from a URI, if there is one")
    down.add_argument("uri")
    down.add_argument("db", type=Path)
    args = p.parse_args(argv)
    try:
        if args.action == "backup":
            backup(args.db.expanduser(), args.uri)
            print(f"backed up {args.db} to {args.uri}")
        else:
            print(f"restored {args.uri} to {args.db}" if restore(args.uri, args.db.expanduser()) else f"nothing at {args.uri}")
    except (StoreSyncError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
