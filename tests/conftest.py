"""Fixtures shared across test modules: the smoke sweep runs once per session and every test that
only reads its outputs (MLflow runs, Ray results, report, checkpoints) reuses it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import smoke_sweep_command


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> tuple[Path, str]:
    """`python -m sweep.launch search_spaces/smoke.yaml` run to the end: its working folder and output."""
    work = tmp_path_factory.mktemp("smoke")
    cmd, env = smoke_sweep_command(work)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def small_sweep_fid_cache(tmp_path_factory) -> Path:
    """One FID cache for the fault, resume, divergence and two-node sweeps: they share one reference
    (digits, 128 images), which the first of them computes (~20 s) and the others load."""
    return tmp_path_factory.mktemp("small_sweep_fid_cache")


SWEEP_FIXTURES = {"smoke_sweep", "small_sweep_fid_cache"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs (or reads) a real sweep is slow: ``python -m pytest -m "not slow"`` leaves it out."""
    for item in items:
        if SWEEP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
