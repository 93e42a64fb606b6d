"""Per-image Gaussian noise drawn on the device from a counter-based hash: no host generator, no copy.

Element j of draw d of the image with seed s is a pure function of (s, d, j), so an image's noise depends on its
own seed alone: not on the batch it is in, on how images are split across workers, or on the device. Each draw is
a few elementwise kernels over the whole batch (one pass of integer hashing and a Box-Muller transform), in
place of one CPU generator per image and a host-to-device copy of every step's noise.

The hash is Chris Wellons' "lowbias32" integer mixer, applied in two rounds keyed by two independent 32-bit words
of (seed, draw), so streams of different images or draws share no structure. All integer arithmetic is exact:
32-bit words are held in int64 and each 32-bit product is formed from 16-bit halves, so nothing overflows and the
same bits come out on every device.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch

_MASK32 = 0xFFFFFFFF
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32 (Wellons, "Prospecting for hash functions", 2018)
_KEY_SALTS = (0x9E3779B9, 0x85EBCA6B)  # separate the two key words (golden ratio, murmur3 constants)
_UNIFORM_BITS = 24  # exactly representable in float32: u in (0, 1), never 0, so log(u) is finite


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for 0 <= x < 2^32, without overflowing int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection of 32-bit words with near-ideal avalanche; int64 in [0, 2^32) in and out."""
    x = x ^ (x >> 16)
    x = _mul32(x, _MIX_MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _MIX_MULTIPLIERS[1])
    return x ^ (x >> 16)


def _mix_int(value: int) -> int:
    """mix32 of one Python int (for keys): the same function, on the host."""
    x = value & _MASK32
    x ^= x >> 16
    x = (x * _MIX_MULTIPLIERS[0]) & _MASK32
    x ^= x >> 15
    x = (x * _MIX_MULTIPLIERS[1]) & _MASK32
    return x ^ (x >> 16)


def seed_words(seeds: Sequence[int]) -> list[int]:
    """One 32-bit word per image from all 64 bits of its seed; computed once per sampling call."""
    words = []
    for seed in seeds:
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        words.append(_mix_int(seed) ^ _mix_int((seed >> 32) ^ _KEY_SALTS[0]))
    return words


def draw_keys(words: torch.Tensor, draw: int) -> torch.Tensor:
    """Two 32-bit key words per image [N, 2] for draw number ``draw``, from seed_words on the device."""
    d1, d2 = _mix_int(draw), _mix_int(draw ^ _KEY_SALTS[1])
    return torch.stack((mix32(words ^ d1), mix32(words ^ d2 ^ _KEY_SALTS[0])), dim=1)


@lru_cache(maxsize=8)
def _element_words(pairs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mix32 of each element pair's two counters (2p, 2p + 1): fixed by the image shape, computed once."""
    index = torch.arange(pairs, device=device, dtype=torch.int64) * 2
    return mix32(index), mix32(index + 1)


def gaussian(keys: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
    """Standard normal float32 [N, numel] from int64 keys [N, 2] (see draw_keys)."""
    pairs = (numel + 1) // 2
    even, odd = _element_words(pairs, device)
    k1, k2 = keys[:, :1], keys[:, 1:]
    h1 = mix32(mix32(even ^ k1) ^ k2)  # [N, pairs]: two rounds, each keyed by one word
    h2 = mix32(mix32(odd ^ k1) ^ k2)
    scale = 2.0 ** -_UNIFORM_BITS
    u1 = ((h1 >> (32 - _UNIFORM_BITS)).to(torch.float32) + 0.5) * scale
    u2 = ((h2 >> (32 - _UNIFORM_BITS)).to(torch.float32) + 0.5) * scale
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)  # Box-Muller, both halves
    return z.reshape(len(keys), 2 * pairs)[:, :numel]


class ImageNoise:
    """Draw after draw of per-image noise [N, *shape] on ``device``; draw d of image i depends on (seeds[i], d)."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        self.words = torch.tensor(seed_words(seeds), dtype=torch.int64).to(self.device)
        self.numel = math.prod(self.shape)
        self.draws = 0

    def draw(self) -> torch.Tensor:
        z = gaussian(draw_keys(self.words, self.draws), self.numel, self.device)
        self.draws += 1
        return z.reshape(len(self.words), *self.shape).to(self.dtype)
