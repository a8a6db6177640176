"""DDPM U-Net in the style of openai/improved-diffusion.

Residual blocks with scale-shift (AdaGN) timestep conditioning, multi-head
self-attention at chosen resolutions and in the middle block, optional class
conditioning with a null class for classifier-free guidance. Works for any
square image size (odd sizes included): upsampling interpolates to the size of
the matching skip connection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffusion_core.config import RunConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps into (B, dim) (Vaswani et al. / Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with gcd(32, channels) groups."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding via h = norm(h) * (1 + scale) + shift."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, -1).transpose(-1, -2).contiguous().unbind(1)  # contiguous: fused SDPA kernels need it
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj(h).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Strided 3x3 convolution; spatial size H -> ceil(H / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class EmbedSequential(nn.Sequential):
    """Sequential that feeds the embedding to res blocks and the target size to upsamplers."""

    def forward(self, x: Tensor, emb: Tensor, size: Sequence[int] | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """DDPM noise-prediction U-Net.

    ``channel_mult`` gives the channel multiplier per resolution level (downsampling
    between levels); attention is used at levels whose resolution is in
    ``attention_resolutions`` and always in the middle block. With ``num_classes``
    set, index ``num_classes`` (``null_class``) is the unconditional label.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 4,
        dropout: float = 0.0,
        image_size: int = 32,
        num_classes: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        self.null_class: int | None = num_classes
        emb_dim = 4 * base_channels

        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def stage(c_in: int, c_out: int, attend: bool) -> EmbedSequential:
            layers: list[nn.Module] = [ResBlock(c_in, c_out, emb_dim, dropout)]
            if attend:
                layers.append(AttentionBlock(c_out, num_heads))
            return EmbedSequential(*layers)

        ch, res = base_channels, image_size
        skip_channels, level_res = [ch], []
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            level_res.append(res)
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, mult * base_channels, res in attention_resolutions))
                ch = mult * base_channels
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                res = (res + 1) // 2

        self.mid = EmbedSequential(
            ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, num_heads), ResBlock(ch, ch, emb_dim, dropout)
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = stage(ch + skip_channels.pop(), mult * base_channels, level_res[level] in attention_resolutions)
                ch = mult * base_channels
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                self.up.append(block)

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict from noisy images x (B, C, H, W), timesteps t (B,) and optional labels y (B,)."""
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("labels given to a model built without num_classes")

        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, skips[-1].shape[-2:] if skips else None)
        return self.out(h)

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())


def build_unet(cfg: RunConfig) -> UNet:
    """The run's U-Net: ``model.*`` for the architecture, ``data.*`` for the image shape, and twice the
    channels when ``diffusion.learn_sigma`` (improved DDPM's learned Σθ)."""
    m = cfg.model
    return UNet(
        in_channels=cfg.data.channels,
        base_channels=m.base_channels,
        channel_mult=m.channel_mult,
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=m.attention_resolutions,
        num_heads=m.num_heads,
        dropout=m.dropout,
        image_size=cfg.data.resolution,
        num_classes=cfg.data.num_classes if m.class_conditional else None,
        out_channels=2 * cfg.data.channels if cfg.diffusion.learn_sigma else None,
    )
