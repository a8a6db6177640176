"""A trial whose latest checkpoint is truncated continues from the previous good one."""
import pytest
from helpers import tiny_config
from ray import tune

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.loop import LAST, RungLoop
from diffusion_core.trainer import Trainer
from sweep import trainable


def _write(trainer, folder, extra):
    folder.mkdir(parents=True)
    return trainer.save_checkpoint(folder / LAST, extra=extra)


def _loop(tmp_path) -> RungLoop:
    return RungLoop(Trainer(tiny_config(), device="cpu"), evaluator=None, folder=tmp_path / "staging")


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, monkeypatch, caplog):
    trainer = Trainer(tiny_config(), device="cpu")
    trainer.train_until(3)
    _write(trainer, tmp_path / "checkpoint_000000", {"run_id": "r1", "best": {"step": 3, "fid": 9.0}})
    trainer.train_until(6)
    latest = _write(trainer, tmp_path / "checkpoint_000001", {"run_id": "r1", "best": {"step": 6, "fid": 8.0}})
    latest.write_bytes(latest.read_bytes()[:1000])
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000001")))

    loop = _loop(tmp_path)
    trainable.restore(loop)
    assert loop.trainer.step == 3 and loop.extra == {"run_id": "r1"} and (loop.best.step, loop.best.fid) == (3, 9.0)
    assert "checkpoint_000001" in caplog.text and "previous good checkpoint" in caplog.text


def test_corrupt_only_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), device="cpu")
    only = _write(trainer, tmp_path / "checkpoint_000000", {})
    only.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000000")))
    with pytest.raises(CheckpointError, match=rf"checkpoint_000000/{LAST}: corrupt or unreadable checkpoint"):
        trainable.restore(_loop(tmp_path))
