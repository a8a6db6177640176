"""The seeds' own experiments as ready sweeps: every seed space validates offline, and seed 001's
MNIST x0-prediction study runs end to end at a reduced size (about 2 minutes on 2 CPU cores)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FID_WEIGHTS, MNIST_ROOT, REPO, image_steps, require, store_uri, sweep_runs

from sweep.launch import main

SEED_SPACES = sorted((REPO / "search_spaces").glob("seed*.yaml"))


def test_the_two_seed_experiments_are_shipped():
    assert {p.name for p in SEED_SPACES} >= {"seed004_fitting.yaml", "seed001_mnist.yaml"}


@pytest.mark.parametrize("space", SEED_SPACES, ids=lambda p: p.stem)
def test_seed_space_passes_dry_run(space, capsys):
    assert main([str(space), "--dry-run"]) == 0
    assert f"{space}: valid" in capsys.readouterr().out


def test_seed004_fitting_searches_exactly_the_table_1_factors(capsys):
    assert main([str(REPO / "search_spaces" / "seed004_fitting.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.channel_mult: choice [[1, 2, 2], [1, 2, 2, 2]]" in out
    assert "model.dropout: choice [0.0, 0.1]" in out and "train.lr: choice [0.0001, 0.0003]" in out
    assert "schedule: cosine" in out and "ema_warmup_steps: 2000" in out and "dataset: cifar10" in out
    assert "8 trials" in out and "grid search (every combination once), no pruning" in out  # Table 1's eight cells, each run to the end


REDUCED = [
    f"data.root={MNIST_ROOT}", "data.download=false", "data.subset=256",
    "model.base_channels=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1", "model.attention_resolutions=[]",
    "model.num_heads=1", "diffusion.timesteps=50", "train.batch_size=16", "train.warmup_steps=5", "train.max_steps=20",
    "eval.every_steps=10", "eval.num_samples=16", "eval.batch_size=16", "eval.sampling_steps=50", "eval.reference_images=64",
    "eval.kid_subset_size=16", "sweep.num_trials=2", "sweep.max_concurrent=2", "sweep.n_startup_trials=2",
    "sweep.scheduler.grace_period=10", "sweep.resources_per_trial={cpu: 1, gpu: 0}", "sweep.max_failures=0",
]


@pytest.mark.slow
def test_seed001_mnist_runs_at_reduced_size_and_logs_interpolations(tmp_path):
    require(MNIST_ROOT / "MNIST" / "raw", "offline MNIST")
    require(FID_WEIGHTS, "FID Inception weights")
    cmd = [sys.executable, "-m", "sweep.launch", str(REPO / "search_spaces" / "seed001_mnist.yaml"),
           "--storage-path", str(tmp_path / "ray_results"), "--set", f"tracking.tracking_uri={store_uri(tmp_path)}",
           "--set", f"eval.cache_dir={tmp_path / 'fid_cache'}"]
    for assignment in REDUCED:
        cmd += ["--set", assignment]
    env = {**os.environ, "DIFFUSION_SWEEP_FID_WEIGHTS": str(FID_WEIGHTS)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client, parents, children = sweep_runs(tmp_path, "seed001-mnist")
    assert len(parents) == 1 and len(children) == 2
    for run in children:
        assert client.get_metric_history(run.info.run_id, "fid"), "every trial reached an evaluation"
    # the study's comparison, on each finished trial's own network: stochastic DDPM vs deterministic DDIM
    finished = [c for c in children if c.data.tags["diffusion_sweep.status"] == "completed"]
    assert finished
    for run in finished:
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "sampling_study.json", str(folder))).read_text())
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert [r["configuration"] for r in rows] == ["default", "0", "1"]
        assert sorted(r["eval.sampler"] for r in rows[1:]) == ["ddim", "ddpm"]
        ddpm = next(r for r in rows[1:] if r["eval.sampler"] == "ddpm")
        assert ddpm["fid"] == rows[0]["fid"] and ddpm["seconds"] == 0.0, "the configured sampler was evaluated twice"
    best_id = parents[0].data.tags["best_run_id"]
    assert image_steps(client, best_id, "interpolation/noise_slerp") and image_steps(client, best_id, "interpolation/xt_real")
    assert "interpolation grids of the best trial" in proc.stdout
