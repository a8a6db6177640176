import pytest
import torch
from torch import nn

from diffusion_core.unet import AttentionBlock, ResBlock, UNet


def small_unet(**kwargs) -> UNet:
    cfg = dict(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,), num_heads=2, image_size=16)
    cfg.update(kwargs)
    return UNet(**cfg)


def perturb_zero_init(model: nn.Module, seed: int = 0) -> None:
    """Randomise all-zero parameters so the zero-initialised layers do not mask the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_output_shape(channels: int, size: int) -> None:
    model = UNet(channels, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(size // 2,), num_heads=2, image_size=size)
    perturb_zero_init(model)
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_odd_sizes_and_float_timesteps() -> None:
    model = small_unet(channel_mult=(1, 2, 2, 2), image_size=28, attention_resolutions=(7, 4))
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([0.5, 10.0]))
    assert out.shape == (2, 1, 28, 28)
    # levels at 7 and 4 (1 down + 2 up blocks each) plus the middle block
    assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 2 * (1 + 2) + 1


def test_res_block_scale_shift_conditioning() -> None:
    """With scale = -1 and shift = 0, norm(h) * (1 + scale) + shift vanishes: only skip + conv bias remain."""
    block = ResBlock(8, 8, emb_dim=4, dropout=0.0)
    perturb_zero_init(block)
    with torch.no_grad():
        block.emb_proj[1].weight.zero_()
        block.emb_proj[1].bias.copy_(torch.cat([-torch.ones(8), torch.zeros(8)]))
    x = torch.randn(2, 8, 5, 5)
    bias = block.out_layers[-1].bias[None, :, None, None]
    assert torch.allclose(block(x, torch.randn(2, 4)), x + bias, atol=1e-6)
    with torch.no_grad():
        block.emb_proj[1].bias.zero_()
    assert not torch.allclose(block(x, torch.randn(2, 4)), x + bias, atol=1e-3)


def test_untrained_model_outputs_zero() -> None:
    model = small_unet()
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([3, 7]))
    assert torch.count_nonzero(out) == 0


def test_out_channels_learned_variance() -> None:
    model = small_unet(in_channels=3, out_channels=6)
    assert model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 6, 16, 16)


def test_class_conditional() -> None:
    model = small_unet(num_classes=10)
    perturb_zero_init(model)
    assert model.null_class == 10 and small_unet().null_class is None
    assert model.class_embed.num_embeddings == 11
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 5])
    out_y = model(x, t, torch.tensor([3, 3]))
    out_null = model(x, t)
    assert out_y.shape == out_null.shape == x.shape
    assert torch.allclose(out_null, model(x, t, torch.tensor([10, 10])))
    assert not torch.allclose(out_y, out_null)
    assert not torch.allclose(out_y, model(x, t, torch.tensor([4, 4])))


def test_num_heads_changes_attention() -> None:
    torch.manual_seed(0)
    one = small_unet(num_heads=1)
    perturb_zero_init(one)
    four = small_unet(num_heads=4)
    four.load_state_dict(one.state_dict())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 500])
    assert not torch.allclose(one(x, t), four(x, t), atol=1e-5)
    same = small_unet(num_heads=1)
    same.load_state_dict(one.state_dict())
    assert torch.equal(one(x, t), same(x, t))


def test_dropout_only_in_train_mode() -> None:
    model = small_unet(dropout=0.5)
    perturb_zero_init(model)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_num_parameters() -> None:
    small, big = small_unet(base_channels=16), small_unet(base_channels=32)
    assert small.num_parameters() == sum(p.numel() for p in small.parameters())
    assert big.num_parameters() > small.num_parameters()


def test_heads_must_divide_channels() -> None:
    with pytest.raises(ValueError, match="num_heads"):  # middle block, 16 channels
        small_unet(base_channels=16, channel_mult=(1,), num_heads=3, attention_resolutions=())
    with pytest.raises(ValueError, match="num_heads"):  # level 0 at 16x16 has 8 channels
        small_unet(base_channels=8, channel_mult=(1, 2), num_heads=16, attention_resolutions=(16,))
    small_unet(base_channels=8, channel_mult=(1, 2), num_heads=16, attention_resolutions=())


def test_gradient_reaches_all_parameters() -> None:
    model = small_unet(num_classes=3)
    perturb_zero_init(model)
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 2]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert torch.count_nonzero(p.grad) > 0, name
