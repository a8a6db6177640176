import io

import pytest
import torch
from torch import nn

from diffusion_core.ema import EMA, EMABank


def linear(weight: float, bias: float = 0.0) -> nn.Linear:
    model = nn.Linear(1, 1)
    set_weights(model, weight, bias)
    return model


def set_weights(model: nn.Linear, weight: float, bias: float = 0.0) -> None:
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)


def shadow_values(ema: EMA) -> tuple[float, float]:
    return ema.shadow.weight.item(), ema.shadow.bias.item()


def test_update_rule_with_warmup() -> None:
    model = linear(1.0, -1.0)
    ema = EMA(model, rate=0.75, warmup_steps=2)
    expected = [  # (model weight, model bias) after the step -> EMA values
        ((2.0, 4.0), (2.0, 4.0)),      # step 1 <= warm-up: copy
        ((4.0, 8.0), (4.0, 8.0)),      # step 2 <= warm-up: copy, theta_ema(N) = theta(N)
        ((8.0, 0.0), (5.0, 6.0)),      # 0.75 * 4 + 0.25 * 8, 0.75 * 8 + 0.25 * 0
        ((0.0, 4.0), (3.75, 5.5)),     # 0.75 * 5 + 0.25 * 0, 0.75 * 6 + 0.25 * 4
    ]
    for step, ((w, b), ema_wb) in enumerate(expected, start=1):
        set_weights(model, w, b)
        ema.update(model, step)
        assert shadow_values(ema) == pytest.approx(ema_wb, abs=1e-7)


def test_no_warmup_averages_from_initial_copy() -> None:
    model = linear(1.0)
    ema = EMA(model, rate=0.75)
    set_weights(model, 2.0)
    ema.update(model, 1)
    assert shadow_values(ema)[0] == pytest.approx(1.25)


def test_shadow_is_independent_frozen_copy() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    ema = EMA(model, rate=0.9)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.shadow[0].weight, model[0].weight)
    model(torch.randn(8, 2))  # changes BatchNorm running stats
    ema.update(model, 1)
    for ema_buf, buf in zip(ema.shadow.buffers(), model.buffers()):
        assert torch.equal(ema_buf, buf)
    assert ema.shadow[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.5, 1.5])
def test_invalid_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        EMA(linear(1.0), rate=rate)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))


def train(make_tracker, steps: int):
    """Train a small MLP with SGD, updating the tracker (EMA or EMABank) after each step."""
    torch.manual_seed(0)
    model = mlp()
    tracker = make_tracker(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        tracker.update(model, step)
    return tracker


def test_state_dict_round_trip() -> None:
    ema = train(lambda m: EMA(m, rate=0.9, warmup_steps=2), steps=6)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(mlp(), rate=0.5)
    restored.load_state_dict(torch.load(buffer))
    assert restored.rate == 0.9 and restored.warmup_steps == 2
    for a, b in zip(restored.shadow.state_dict().values(), ema.shadow.state_dict().values()):
        assert torch.equal(a, b)


def test_bank_matches_individual_emas() -> None:
    rates = (0.5, 0.9, 0.999)
    bank = train(lambda m: EMABank(m, rates, warmup_steps=3), steps=10)
    models = bank.models()
    assert list(models) == list(rates)
    for rate in rates:
        alone = train(lambda m: EMA(m, rate, warmup_steps=3), steps=10)
        for a, b in zip(models[rate].parameters(), alone.shadow.parameters()):
            assert torch.allclose(a, b, rtol=0, atol=1e-7)
    w = [m[0].weight for m in models.values()]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


def test_bank_state_dict_round_trip() -> None:
    bank = train(lambda m: EMABank(m, (0.9, 0.99), warmup_steps=1), steps=5)
    state = bank.state_dict()
    restored = EMABank(mlp(), (0.9, 0.99))
    restored.load_state_dict(state)
    for rate, model in restored.models().items():
        for a, b in zip(model.parameters(), bank.models()[rate].parameters()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError):
        EMABank(nn.Linear(4, 1), (0.9, 0.5)).load_state_dict(state)
    with pytest.raises(ValueError):
        EMABank(nn.Linear(4, 1), (0.9, 0.9))
