"""Checkpoints: written inside their own folder (the trial's storage), atomically, whatever the system temp folder
holds; each carries a format version, and an old, newer or foreign file is one error line."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from helpers import ScriptedEvaluator, tiny_config
from ray import tune

from diffusion_core.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_model, save_atomic
from diffusion_core.loop import BEST, LAST, RungLoop, samples_file
from diffusion_core.trainer import Trainer
from sweep.trainable import staging_folder

CFG = tiny_config(model={"base_channels": 8, "channel_mult": [1], "attention_resolutions": [], "num_heads": 1},
                  train={"batch_size": 8, "max_steps": 20}, eval={"every_steps": 10})


def test_a_full_temp_folder_does_not_stop_the_checkpoints(tmp_path, monkeypatch):
    """The temp folder made unusable (a file where the folder should be: even root cannot write there)."""
    blocked = tmp_path / "tmp"
    blocked.write_text("not a folder")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    with pytest.raises(OSError):
        tempfile.mkstemp()
    RungLoop(Trainer(CFG, device="cpu"), ScriptedEvaluator([3.0, 2.0]), tmp_path / "trial").run(lambda rung: None)
    written = sorted(p.name for p in (tmp_path / "trial").iterdir())
    assert written == sorted([BEST, LAST, samples_file(10), samples_file(20)])


def test_staging_is_inside_the_trials_own_storage(monkeypatch, tmp_path):
    trial_dir = "/ray-temp/session_1/artifacts/2026/smoke/working_dirs/run_trial_ab_00001_1_lr=0.001"
    monkeypatch.setattr(tune, "get_context", lambda: type("Context", (), {"get_trial_dir": lambda self: trial_dir})())
    local = staging_folder(str(tmp_path / "smoke"))
    assert local == tmp_path / "smoke" / "run_trial_ab_00001_1_lr=0.001" / "rung_checkpoint"
    assert staging_folder("s3://bucket/sweeps/smoke") == Path(trial_dir) / "rung_checkpoint"  # object storage: this node's disk


@pytest.mark.parametrize("state,message", [
    ({"step": 3, "model": {}}, "written by an older diffusion-sweep (no format version"),
    ({"format": FORMAT_VERSION + 1, "kind": "trainer"}, f"checkpoint format {FORMAT_VERSION + 1} is newer than this diffusion-sweep reads"),
    ({"format": FORMAT_VERSION, "kind": "optimizer"}, "a 'optimizer' checkpoint, expected trainer or model"),
])
def test_old_newer_or_foreign_checkpoints_are_one_line(tmp_path, state, message):
    path = save_atomic(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_model_file_is_not_a_trainer_checkpoint(tmp_path):
    RungLoop(Trainer(CFG, device="cpu"), ScriptedEvaluator([3.0, 2.0]), tmp_path).run(lambda rung: None)
    with pytest.raises(CheckpointError, match="a 'model' checkpoint, expected trainer"):
        Trainer(CFG, device="cpu").load_checkpoint(tmp_path / BEST)
    model, cfg, info = load_model(tmp_path / BEST)
    assert cfg == CFG and info["step"] == 20 and all(torch.isfinite(p).all() for p in model.parameters())
