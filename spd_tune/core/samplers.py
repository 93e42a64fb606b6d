"""Reverse processes in Fourier space: ancestral (FIXED_LARGE) and DDIM, with respacing.

The reference code samples per frequency with all T steps; here any K <= T steps work
(``DiffusionSchedule.respace``), and every image draws its noise from its own seed, on the device (core/noise.py),
so a sample does not depend on the batch size, on how images are split across workers, or on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .noise import ImageNoise
from .schedule import Denoiser, DiffusionSchedule, combine_filtered, compute_dtype

# The samplers by name: the one place they are spelled. Configs, the post-hoc study and the CLIs take these names.
SamplerKind = Literal["ancestral", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(SamplerKind)


def uses_eta(kind: str) -> bool:
    """Whether the sampler takes DDIM's eta (the others ignore it and keep it at 0)."""
    return kind == "ddim"


@dataclass(frozen=True)
class SamplerConfig:
    """``steps`` = K network evaluations (None: all T); ``eta`` only for DDIM (0 = deterministic)."""

    kind: SamplerKind = "ancestral"
    steps: int | None = None
    eta: float = 0.0

    @classmethod
    def of(cls, kind: str, steps: int | None = None, eta: float = 0.0) -> SamplerConfig:
        """A sampler with ``eta`` kept only where it applies."""
        return cls(kind, steps=steps, eta=float(eta) if uses_eta(kind) else 0.0)

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler kind={self.kind!r} must be one of {', '.join(map(repr, SAMPLERS))}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"sampler eta={self.eta!r} must be in [0, 1]")
        if not uses_eta(self.kind) and self.eta != 0.0:
            raise ValueError("eta applies to the DDIM sampler only")


@torch.no_grad()
def sample(
    model: Denoiser,
    schedule: DiffusionSchedule,
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    *,
    config: SamplerConfig = SamplerConfig(),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Generate len(seeds) images [N, C, H, W] starting from white N(0, I), no clipping (as the reference)."""
    device = torch.device(device)
    if not seeds:
        raise ValueError("need at least one seed")
    sched = schedule.respace(config.steps)
    tab = sched.tables(device, dtype)
    noise = ImageNoise(seeds, shape, device, dtype)
    x = noise.draw()
    sigma_ddim = _ddim_sigma(tab, config.eta) if uses_eta(config.kind) else None
    for n in range(sched.steps - 1, -1, -1):
        eps = model(x, tab.model_time[n].expand(len(seeds))).to(compute_dtype(x))
        z = noise.draw() if n > 0 and (config.kind == "ancestral" or config.eta > 0) else None
        if config.kind == "ancestral":
            x = ancestral_step(x, eps, tab, n, z)
        else:
            x = ddim_step(x, eps, tab, n, sigma_ddim, z)
    return x


def ancestral_step(x, eps, tab, n: int, z: torch.Tensor | None) -> torch.Tensor:
    """x_{n-1} = Re F^-1[(X - beta/sqrt(1-ab) E)/sqrt(alpha) + sigma F z], sigma^2 = beta (FIXED_LARGE).

    At n = 0 this is exactly the Fourier x0-prediction.
    """
    terms = [(x, tab.ddpm_x_coef[n]), (eps, -tab.ddpm_eps_coef[n])]
    if z is not None:
        terms.append((z, tab.ddpm_sigma[n]))
    return combine_filtered(terms, x.dtype)


def ddim_step(x, eps, tab, n: int, sigma: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """X_{n-1} = sqrt(ab_prev) X0hat + sqrt(1 - ab_prev - sigma^2) E + sigma F z, per frequency."""
    x0_gain = tab.sqrt_ab_prev[n] * tab.recip_sqrt_ab[n]
    direction = tab.sqrt_one_minus_ab_prev[n]
    if sigma is not None:
        direction = (direction.square() - sigma[n].square()).clamp(min=0).sqrt()
    terms = [(x, x0_gain), (eps, direction - x0_gain * tab.sqrt_one_minus_ab[n])]
    if z is not None and sigma is not None:
        terms.append((z, sigma[n]))
    return combine_filtered(terms, x.dtype)


def _ddim_sigma(tab, eta: float) -> torch.Tensor | None:
    return None if eta == 0.0 else eta * tab.ddim_unit_sigma
