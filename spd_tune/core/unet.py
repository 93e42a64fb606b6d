"""The iDDPM / guided-diffusion UNet, written compactly (the network of the SPD reference code; docs/method.md).

It knows nothing about Fourier space: it maps (x_t, model time) to an epsilon estimate. Attention uses
F.scaled_dot_product_attention; GroupNorm runs in float32 so bf16 autocast stays stable; nothing
depends on the memory format, so channels_last and torch.compile work unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes in pixels
    num_heads: int = 4
    dropout: float = 0.3
    use_scale_shift_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in ("image_size", "in_channels", "out_channels", "channels", "num_res_blocks", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet {name}={value!r} must be a positive integer")
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise ValueError(f"UNet channel_mult={self.channel_mult!r} must be positive integers")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"UNet image_size={self.image_size} must be divisible by 2^{levels - 1} for {levels} levels")
        sizes = {self.image_size >> level for level in range(levels)}
        if not set(self.attention_resolutions) <= sizes:
            raise ValueError(
                f"UNet attention_resolutions={self.attention_resolutions} must be among the feature sizes {sorted(sizes)}"
            )
        if any(self.channels * m % self.num_heads for m in self.channel_mult):
            raise ValueError(f"UNet channels*mult must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNet dropout={self.dropout!r} must be in [0, 1)")


def preset_config(name: str, **overrides) -> UNetConfig:
    """A preset with some fields replaced; an unknown preset or field is a ValueError naming the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown UNet option(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, UNetConfig] = {
    # iDDPM CIFAR-10 (the SPD reference): 52.5M parameters
    "cifar10": UNetConfig(),
    # iDDPM ImageNet-64 layout
    "imagenet64": UNetConfig(image_size=64, channel_mult=(1, 2, 3, 4), dropout=0.0),
    # small networks for the demo and the tests
    "tiny": UNetConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                       num_heads=2, dropout=0.1),
    "micro": UNetConfig(image_size=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), num_heads=1, dropout=0.0),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of the (float) model time, guided-diffusion's layout [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) as guided-diffusion for >= 128 channels; at least 4 channels per group below that.

    With one channel per group (16 channels, 16 groups) GroupNorm becomes InstanceNorm and erases
    every feature map's mean, which small networks need to model the DC frequency.
    """
    return GroupNorm32(math.gcd(32, max(1, channels // 4)), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, emb_dim: int, dropout: float, scale_shift: bool):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1)))
        self.out_norm = norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))
        # guided-diffusion's (legacy) head layout: each head's q, k, v are contiguous
        q, k, v = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, -1).transpose(-1, -2).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(h).reshape(b, c, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.ModuleList):
    """A ResBlock followed by optional attention and resampling: one entry of the UNet's ladders."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.use_scale_shift_norm)

        skips, size = [ch], cfg.image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                stage = Stage([res(ch, mult * cfg.channels)])
                ch = mult * cfg.channels
                if size in cfg.attention_resolutions:
                    stage.append(AttentionBlock(ch, cfg.num_heads))
                self.down.append(stage)
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Stage([Downsample(ch)]))
                skips.append(ch)
                size //= 2
        self.middle = Stage([res(ch, ch), AttentionBlock(ch, cfg.num_heads), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = Stage([res(ch + skips.pop(), mult * cfg.channels)])
                ch = mult * cfg.channels
                if size in cfg.attention_resolutions:
                    stage.append(AttentionBlock(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    stage.append(Upsample(ch))
                    size *= 2
                self.up.append(stage)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        return cls(preset_config(name, **overrides))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.channels))
        h = self.input_conv(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
