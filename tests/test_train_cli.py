"""``python -m diffusion_core.train CONFIG.yaml [--set key=value ...]``: a single run without Ray.

A tiny U-Net on 8x8 digits, 40 steps with an evaluation every 20 (8 samples against 32 reference
images: the Inception forward runs at a few images per second on a small CPU), then continued to
60 steps; plus the one-line errors and exit codes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import FID_WEIGHTS, ema_model, require
from PIL import Image

from diffusion_core.checkpoint import load_safe
from diffusion_core.config import load_run_config
from diffusion_core.train import main
from diffusion_core.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "cli",
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "digits"},
        "model": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1, "dropout": 0.0},
        "diffusion": {"schedule": "cosine", "timesteps": 100},
        "train": {"batch_size": 16, "lr": 1e-3, "warmup_steps": 5, "ema_rates": 0.9, "max_steps": 40, "seed": 0},
        "eval": {
            "every_steps": 20,
            "num_samples": 8,
            "batch_size": 8,
            "sampler": "ddim",
            "sampling_steps": 10,
            "reference_images": 32,
            "kid_subset_size": 8,
            "inception_weights": str(FID_WEIGHTS),
            "cache_dir": str(tmp_path / "fid_cache"),
        },
    }
    for section, values in changes.items():
        if isinstance(values, dict):
            raw[section] = {**raw.get(section, {}), **values}
        else:
            raw[section] = values
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Train 40 steps (evaluations at 20 and 40); return the run folder and a copy of its state then."""
    require(FID_WEIGHTS, "FID Inception weights")
    tmp_path = tmp_path_factory.mktemp("cli")
    config = write_config(tmp_path)
    assert main([str(config)]) == 0
    out = tmp_path / "runs" / "cli"
    shutil.copytree(out, tmp_path / "at_step_40" / "cli")
    snapshot = {
        "files": sorted(p.name for p in out.iterdir()),
        "metrics": read_metrics(out),
        "last_step": load_safe(out / "checkpoint_last.pt")["step"],
    }
    return {"tmp_path": tmp_path, "config": config, "out": out, "first": snapshot}


@pytest.mark.slow
def test_run_writes_checkpoints_samples_and_metrics(run_dir):
    first = run_dir["first"]
    assert first["files"] == ["checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl", "samples_0000020.png", "samples_0000040.png"]
    assert first["last_step"] == 40
    metrics = first["metrics"]
    assert [m["step"] for m in metrics] == [20, 40]
    for record in metrics:
        assert {"step", "loss", "fid", "kid", "kid_std", "eval_seconds"} <= set(record)
        assert all(math.isfinite(record[k]) for k in ("loss", "fid", "kid", "kid_std"))
        assert 0 < record["loss"] < 2 and record["fid"] > 0 and record["eval_seconds"] > 0


@pytest.mark.slow
def test_best_checkpoint_is_the_lowest_fid(run_dir):
    out = run_dir["tmp_path"] / "at_step_40" / "cli"  # the untouched copy of the first run
    best = min(read_metrics(out), key=lambda m: m["fid"])
    state = load_safe(out / "checkpoint_best.pt")
    assert state["kind"] == "model" and state["info"]["step"] == best["step"] and state["info"]["fid"] == best["fid"]
    assert {"weights", "config", "format"} <= set(state)
    assert {"model", "emas", "optimizer", "rng", "config"} <= set(load_safe(out / "checkpoint_last.pt"))


@pytest.mark.slow
def test_sample_grid_is_a_png_of_the_samples(run_dir):
    with Image.open(run_dir["out"] / "samples_0000020.png") as png:
        assert png.mode == "RGB"
        image = torch.from_numpy(np.array(png)).permute(2, 0, 1)
    # 8 samples: 4 rows x 2 columns of 8x8 tiles with 2-pixel padding, gray repeated to RGB
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 42, 22)
    assert torch.equal(image[0], image[1]) and image.float().std() > 0


@pytest.fixture(scope="module")
def continued(run_dir) -> str:
    """The same run re-run with max_steps 60; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(run_dir["config"]), "--set", "train.max_steps=60"]) == 0
    return printed.getvalue()


@pytest.mark.slow
def test_rerun_with_more_steps_continues_from_the_last_checkpoint(run_dir, continued):
    out = run_dir["out"]
    assert f"continuing {out / 'checkpoint_last.pt'} at step 40" in continued
    assert load_safe(out / "checkpoint_last.pt")["step"] == 60
    metrics = read_metrics(out)
    assert metrics[:2] == run_dir["first"]["metrics"]  # appended, not rewritten
    assert [m["step"] for m in metrics] == [20, 40, 60]
    assert (out / "samples_0000060.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("changes,shown", [
    (["diffusion.schedule=linear", "train.lr=0.01"], "diffusion.schedule: 'cosine' -> 'linear'; train.lr: 0.001 -> 0.01"),
    (["eval.sampling_steps=1"], "eval.sampling_steps: 10 -> 1"),
])
def test_continuing_with_another_config_is_refused(run_dir, capsys, changes, shown):
    """A changed schedule, LR or evaluation would report another model's FID as this run's: refused, nothing written."""
    base = run_dir["tmp_path"] / "at_step_40"
    out = base.parent / f"changed_{len(changes)}"
    shutil.copytree(base, out)
    config = write_config(out, output_dir=str(out), eval={"cache_dir": str(run_dir["tmp_path"] / "fid_cache")})
    before = {p.name: p.read_bytes() for p in (out / "cli").iterdir()}
    args = [str(config), "--set", "train.max_steps=60"] + [a for change in changes for a in ("--set", change)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out / 'cli' / 'checkpoint_last.pt'}: continues a run trained with another config")
    assert shown in err and "train.max_steps" not in err.split("(may change")[0]
    assert {p.name: p.read_bytes() for p in (out / "cli").iterdir()} == before


@pytest.mark.slow
def test_rerun_training_matches_an_uninterrupted_run(run_dir, continued):
    """Continuing 40 -> 60 gives the same weights as training 0 -> 60 in one go (exact restore)."""
    out = run_dir["out"]
    cfg = load_run_config(run_dir["config"])
    straight = Trainer(cfg, device="cpu")
    straight.train_until(60)
    resumed = load_safe(out / "checkpoint_last.pt")
    assert resumed["step"] == 60
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for name, tensor in ema_model(straight).state_dict().items():
        assert torch.equal(tensor, resumed["emas"]["emas"][0]["shadow"][name]), name


# --- errors -----------------------------------------------------------------------------------


def test_search_dimension_exits_2_with_one_line_and_no_traceback(tmp_path):
    config = write_config(tmp_path, train={"lr": {"loguniform": [1e-4, 1e-3]}})
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_core.train", str(config)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {config}: train.lr: ")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_exits_2_with_one_line(tmp_path, capsys):
    config = write_config(tmp_path, eval={"num_sample": 16})
    assert main([str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith(f"error: {config}: eval.num_sample: unknown key")


def test_search_dimension_in_a_nested_section_names_the_key(tmp_path, capsys):
    config = write_config(tmp_path, model={"num_heads": {"choice": [1, 2]}})
    assert main([str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"error: {config}: model.num_heads: ")


def test_bad_override_exits_2(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main([str(config), "--set", "train.max_steps=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"error: {config}: train.max_steps: ")


def test_sweep_and_tracking_sections_are_ignored(tmp_path, capsys):
    missing = tmp_path / "no_such_inception.pth"
    config = write_config(tmp_path, sweep={"num_trials": 3, "seed": 1}, tracking={"tracking_uri": "sqlite:///x.db"})
    # the config is accepted: the run gets as far as looking for the (missing) Inception weights
    assert main([str(config), "--set", f"eval.inception_weights={missing}"]) == 1
    err = capsys.readouterr().err
    assert "unknown key" not in err and err.startswith("error: FID Inception weights") and str(missing) in err


def test_missing_fid_weights_exits_1_with_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "no_such_inception.pth"
    config = write_config(tmp_path)
    assert main([str(config), "--set", f"eval.inception_weights={missing}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "Traceback" not in err
    assert err.startswith("error: ") and str(missing) in err and "eval.inception_weights" in err
    assert not (tmp_path / "runs" / "cli" / "checkpoint_last.pt").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "absent.yaml: cannot read the file" in err
