import torch

from diffusion_core.checkpoint import CheckpointError, load_safe
from diffusion_core.trainer import DivergenceError, Trainer
from helpers import tiny_config

import pytest


def test_checkpoint_restore_continues_exactly(tmp_path):
    """2k steps with a checkpoint at 1k: a fresh process restored from it repeats steps 1k..2k exactly."""
    cfg = tiny_config(
        model={"base_channels": 8, "channel_mult": [1], "attention_resolutions": [], "num_heads": 1},
        train={"batch_size": 8, "max_steps": 2000},
    )
    straight = Trainer(cfg, device="cpu")
    expected = straight.train_until(1000)
    straight.save_checkpoint(tmp_path / "ckpt.pt", extra={"run_id": "abc"})
    expected += straight.train_until(2000)

    torch.manual_seed(999)  # a restarted process has some other global RNG state
    resumed = Trainer(cfg, device="cpu")
    assert resumed.load_checkpoint(tmp_path / "ckpt.pt") == {"run_id": "abc"}
    assert resumed.step == 1000
    assert resumed.train_until(2000) == expected[1000:]
    for a, b in zip(straight.ema.shadow.parameters(), resumed.ema.shadow.parameters()):
        assert torch.equal(a, b)


def test_loss_falls_and_warmup_ramps_lr():
    trainer = Trainer(tiny_config(), device="cpu")
    assert trainer.lr_at(0) == pytest.approx(1e-4) and trainer.lr_at(50) == pytest.approx(1e-3)
    losses = trainer.train_until(300)
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:10]) / 10


def test_divergence_raises_at_once():
    trainer = Trainer(tiny_config(), device="cpu")
    trainer.train_until(5)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(DivergenceError, match="at step 6"):
        trainer.train_until(200)


def test_truncated_checkpoint_gives_one_clear_error(tmp_path):
    trainer = Trainer(tiny_config(), device="cpu")
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pt: corrupt"):
        load_safe(path)
