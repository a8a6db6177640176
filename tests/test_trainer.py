import pytest
import torch
from helpers import ema_model, tiny_config

from diffusion_core.checkpoint import CheckpointError, load_safe
from diffusion_core.trainer import DivergenceError, Trainer


@pytest.mark.slow
def test_checkpoint_restore_continues_exactly(tmp_path):
    """600 steps with a checkpoint at 300: a fresh process restored from it repeats steps 300..600 exactly,
    across epoch boundaries of the data order (1,437 training digits in batches of 8: the batches at steps
    359 and 538 span two epochs) and with dropout drawing from the restored global RNG."""
    cfg = tiny_config(
        model={"base_channels": 8, "channel_mult": [1], "attention_resolutions": [], "num_heads": 1},
        train={"batch_size": 8, "max_steps": 600},
    )
    straight = Trainer(cfg, device="cpu")
    expected = straight.train_until(300)
    straight.save_checkpoint(tmp_path / "ckpt.pt", extra={"run_id": "abc"})
    expected += straight.train_until(600)

    torch.manual_seed(999)  # a restarted process has some other global RNG state
    resumed = Trainer(cfg, device="cpu")
    assert resumed.load_checkpoint(tmp_path / "ckpt.pt") == {"run_id": "abc"}
    assert resumed.step == 300
    assert resumed.train_until(600) == expected[300:]
    for a, b in zip(ema_model(straight).parameters(), ema_model(resumed).parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
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


def _losses_and_state(cfg, steps=3):
    trainer = Trainer(cfg, device="cpu")
    return trainer, trainer.train_until(steps)


def test_channels_last_trains_the_same_model_in_nhwc_and_checkpoints_portably(tmp_path):
    model = {"base_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [4], "num_heads": 2, "dropout": 0.0}
    plain, expected = _losses_and_state(tiny_config(model=model))
    nhwc, losses = _losses_and_state(tiny_config(model=model, train={"channels_last": True}))
    conv_weights = [p for p in nhwc.model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert any(not p.is_contiguous() for p in conv_weights)  # 3x3 kernels really are NHWC, not NCHW
    assert nhwc._batch()[0].is_contiguous(memory_format=torch.channels_last)
    assert losses == pytest.approx(expected, rel=1e-4)  # same seeds, same math; only the memory layout differs
    nhwc.save_checkpoint(tmp_path / "nhwc.pt")
    plain.load_checkpoint(tmp_path / "nhwc.pt")  # a channels-last checkpoint loads into a default trainer
    for a, b in zip(plain.model.parameters(), nhwc.model.parameters()):
        assert torch.equal(a, b)


def test_compiled_training_matches_eager_and_checkpoints_without_the_wrapper(tmp_path):
    model = {"base_channels": 8, "channel_mult": [1], "attention_resolutions": [], "num_heads": 1, "dropout": 0.0}
    _, expected = _losses_and_state(tiny_config(model=model), steps=2)
    compiled, losses = _losses_and_state(tiny_config(model=model, train={"compile": True}), steps=2)
    assert isinstance(compiled.loss_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.loss_model._orig_mod is compiled.model
    assert losses == pytest.approx(expected, rel=1e-4)
    state = load_safe(compiled.save_checkpoint(tmp_path / "compiled.pt"))
    assert not any("_orig_mod" in key for key in state["model"])
    Trainer(tiny_config(model=model), device="cpu").load_checkpoint(tmp_path / "compiled.pt")
