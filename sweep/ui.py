"""A local MLflow UI for a sweep's store: ``mlflow server`` bound to 127.0.0.1 on a free port, as a
context manager that waits until it answers and always stops it (used by tests and docs/screenshots.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend_store_uri: str, artifact_root: Path | str, log_file: Path, timeout_s: float = 120,
                  port: int | None = None) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 (on ``port``, else a free one) with one worker; yields its base URL
    ``http://127.0.0.1:PORT``.

    ``artifact_root``: a folder or an object-store URI (``s3://...``) where the runs created through the server
    store their artifacts (it proxies them); runs created elsewhere keep their own artifact URIs."""
    port = port or free_port()
    destination = artifact_root if isinstance(artifact_root, str) and "://" in artifact_root else Path(artifact_root).resolve().as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri, "--artifacts-destination", destination]
    url = f"http://{HOST}:{port}"
    with open(log_file, "ab") as log:
        # its own process group: `mlflow server` runs uvicorn as a child, which must stop with it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": backend_store_uri},
                                start_new_session=True)
        try:
            _wait_until_up(url, proc, timeout_s, log_file)
            yield url
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL what is left after 20 s (children included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout_s:.0f}s; see {log_file}")
