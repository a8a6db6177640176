import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_core.dropout import Dropout, dropout, uniform_int16

N = 2**20


def keep_mask(p: float, seed: int = 0, n: int = N) -> torch.Tensor:
    torch.manual_seed(seed)
    return dropout(torch.ones(n), p, training=True) != 0


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p_in_every_lane(p: float) -> None:
    keep = keep_mask(p).float()
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    # The mask is cut from four int16 lanes of each int64 draw: no lane may be biased (a draw whose top bit
    # were always 0 would bias the fourth lane).
    for lane in range(4):
        assert abs(keep[lane::4].mean().item() - (1 - p)) < 5 * 2 * sigma


def test_neighbouring_mask_elements_are_uncorrelated() -> None:
    keep = keep_mask(0.3).float()
    for lag in (1, 2, 3, 4, 5):
        a, b = keep[:-lag], keep[lag:]
        rho = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(rho) < 5 / math.sqrt(N), lag


def test_uniform_int16_is_uniform_over_its_range() -> None:
    torch.manual_seed(0)
    u = uniform_int16(N).long()
    assert u.min().item() == -(2**15) and u.max().item() == 2**15 - 1
    counts = torch.bincount((u + 2**15) // 2**12, minlength=16).double()  # top 4 bits
    chi2 = ((counts - N / 16) ** 2 / (N / 16)).sum().item()
    assert chi2 < 37.7  # chi-square, 15 degrees of freedom, p = 0.001


def test_kept_values_are_scaled_and_the_gradient_is_the_mask() -> None:
    p = 0.2
    x = torch.randn(8, 16, 12, 12, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(y[kept], x.detach()[kept] * (1 / (1 - p)))
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.equal(x.grad, torch.where(kept, g * (1 / (1 - p)), torch.zeros_like(g)))


def test_the_mean_is_preserved() -> None:
    torch.manual_seed(2)
    x = torch.full((N,), 3.0)
    assert dropout(x, 0.25, training=True).mean().item() == pytest.approx(3.0, rel=5 * math.sqrt(0.25 / 0.75 / N))


def test_seeded_masks_repeat_and_differ_between_seeds() -> None:
    assert torch.equal(keep_mask(0.1, seed=5, n=4096), keep_mask(0.1, seed=5, n=4096))
    assert not torch.equal(keep_mask(0.1, seed=5, n=4096), keep_mask(0.1, seed=6, n=4096))


def test_odd_sizes_are_masked_whole() -> None:
    torch.manual_seed(0)
    y = dropout(torch.ones(3, 5, 7), 0.5, training=True)
    assert y.shape == (3, 5, 7) and set(y.unique().tolist()) == {0.0, 2.0}


def test_identity_in_eval_or_at_p_zero_without_drawing_random_numbers() -> None:
    x = torch.randn(4, 8)
    state = torch.get_rng_state()
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_layer_checks_p_and_matches_f_dropout_in_distribution() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(ValueError):
        Dropout(-0.1)
    torch.manual_seed(3)
    ours = Dropout(0.4).train()(torch.ones(N))
    theirs = F.dropout(torch.ones(N), 0.4, training=True)
    assert set(ours.unique().tolist()) == set(theirs.unique().tolist())
    assert abs((ours == 0).float().mean().item() - (theirs == 0).float().mean().item()) < 10 * math.sqrt(0.24 / N)
