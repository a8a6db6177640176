"""A trial whose latest checkpoint is truncated continues from the previous good one."""
import pytest
from ray import tune

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.trainer import Trainer
from helpers import tiny_config
from sweep import trainable


def _write(trainer, folder, extra):
    folder.mkdir(parents=True)
    return trainer.save_checkpoint(folder / trainable.CHECKPOINT_FILE, extra=extra)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, monkeypatch, caplog):
    cfg = tiny_config()
    trainer = Trainer(cfg, device="cpu")
    trainer.train_until(3)
    _write(trainer, tmp_path / "checkpoint_000000", {"mlflow_run_id": "r1", "best_fid": 9.0})
    trainer.train_until(6)
    latest = _write(trainer, tmp_path / "checkpoint_000001", {"mlflow_run_id": "r1", "best_fid": 8.0})
    latest.write_bytes(latest.read_bytes()[:1000])
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000001")))

    restored = Trainer(cfg, device="cpu")
    extra = trainable._restore(restored)
    assert restored.step == 3 and extra == {"mlflow_run_id": "r1", "best_fid": 9.0}
    assert "checkpoint_000001" in caplog.text and "previous good checkpoint" in caplog.text


def test_corrupt_only_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), device="cpu")
    only = _write(trainer, tmp_path / "checkpoint_000000", {})
    only.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000000")))
    with pytest.raises(CheckpointError, match=r"checkpoint_000000/trainer.pt: corrupt or unreadable checkpoint"):
        trainable._restore(Trainer(tiny_config(), device="cpu"))
