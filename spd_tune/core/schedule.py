"""Noise schedules in Fourier space: SPD's per-frequency schedule and the DDPM baseline.

One interface for both (docs/method.md: ᾱ, betas, tables on the device): an ``alpha_bar`` table of shape [T, H, W]
(frequency-independent schedules use [T, 1, 1]), index n = 0 the least noisy step.
Every table is built once in float64 and cached per (device, dtype) as half-spectrum gains
[T, H, W//2+1] for ``rfft2``; a step gathers rows by index, nothing is copied or recomputed per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .spectrum import SpectrumParams, freq_radius, log_spectrum_model

MAX_BETA = 0.999  # the reference's clamp (compute_beta_from_alpha_bar_nonunif)
MAX_STEPS = 100_000

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


MAX_M = 12.0  # far outside any image spectrum (natural images: m in [1, 3]); D(f) spans > 1e20 beyond it


def check_steps(steps: object, minimum: int = 3) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not minimum <= steps <= MAX_STEPS:
        raise ValueError(
            f"steps={steps!r} must be an integer in [{minimum}, {MAX_STEPS}]"
            + (" (T < 3 makes the reference time grid degenerate: tau = [1/2, 1/2] at T = 2)" if minimum == 3 else "")
        )
    return steps


def time_grid(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference grid: t = linspace(1, T-1, T); returns (tau, s) = ((T - t)/T, t/T), float64.

    tau runs from (T-1)/T at n = 0 down to 1/T at n = T-1 and never reaches 0 or 1 (P3: kept as published).
    s = 1 - tau is returned separately so that 1 - alpha_bar can be formed without cancellation.
    """
    check_steps(steps)
    t = torch.linspace(1.0, steps - 1.0, steps, dtype=torch.float64)
    return (steps - t) / steps, t / steps


def tau_grid(steps: int) -> torch.Tensor:
    return time_grid(steps)[0]


def geodesic_fraction(tau: torch.Tensor, log_d: torch.Tensor) -> torch.Tensor:
    """(1 - D^tau) / (1 - D) with ln D given, exact in float64 for every D > 0.

    Written with expm1 of non-positive arguments only, so nothing overflows at D(0) ~ 1e12 (large m)
    or cancels at D -> 1, where the limit is tau (the removable singularity of P1).
    """
    tau = tau.to(torch.float64)
    log_d = log_d.to(torch.float64)
    singular = log_d.abs() < 1e-30
    safe = torch.where(singular, torch.ones_like(log_d), log_d)
    # D < 1: expm1(tau L) / expm1(L).  D > 1: divide through by D: D^(tau-1) expm1(-tau L) / expm1(-L).
    below = torch.expm1(tau * safe) / torch.expm1(safe)
    above = torch.exp((tau - 1.0) * safe) * torch.expm1(-tau * safe) / torch.expm1(-safe)
    return torch.where(singular, tau.expand_as(below), torch.where(safe < 0, below, above))


def spd_alpha_bar(log_d: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar, 1 - alpha_bar) of SPD, [T, *log_d.shape] float64.

    1 - alpha_bar(tau, ln D) = alpha_bar(1 - tau, -ln D), which keeps tiny noise levels
    (high frequencies at n = 0, ~1e-11 at m = 6) exact instead of rounding them against 1.
    """
    tau, s = time_grid(steps)
    shape = (steps,) + (1,) * log_d.ndim
    tau, s = tau.view(shape), s.view(shape)
    return geodesic_fraction(tau, log_d), geodesic_fraction(s, -log_d)


def betas_from_alpha_bar(alpha_bar: torch.Tensor, one_minus: torch.Tensor | None = None) -> torch.Tensor:
    """beta_n = 1 - ab_n / ab_{n-1} (ab_{-1} = 1), unclamped, float64.

    The difference is taken between whichever of ab or 1 - ab is small, so neither the tiny early
    high-frequency betas nor the late DC ones lose digits.
    """
    alpha_bar = alpha_bar.to(torch.float64)
    one_minus = (1.0 - alpha_bar) if one_minus is None else one_minus.to(torch.float64)
    ab_prev = torch.cat([torch.ones_like(alpha_bar[:1]), alpha_bar[:-1]])
    om_prev = torch.cat([torch.zeros_like(one_minus[:1]), one_minus[:-1]])
    drop = torch.where(ab_prev < 0.5, ab_prev - alpha_bar, one_minus - om_prev)
    return drop / ab_prev


@dataclass(frozen=True)
class ScheduleTables:
    """Device tables for one (device, dtype); gains are half-spectrum [T, H, W//2+1] or [T, 1, 1]."""

    sqrt_ab: torch.Tensor
    sqrt_one_minus_ab: torch.Tensor
    recip_sqrt_ab: torch.Tensor
    sqrt_ab_prev: torch.Tensor
    sqrt_one_minus_ab_prev: torch.Tensor
    ddim_unit_sigma: torch.Tensor  # DDIM's sigma at eta = 1: sqrt((1 - ab_prev)/(1 - ab) * beta_n)
    ddpm_x_coef: torch.Tensor  # 1 / sqrt(alpha_n)
    ddpm_eps_coef: torch.Tensor  # beta_n / (sqrt(1 - ab_n) sqrt(alpha_n))
    ddpm_sigma: torch.Tensor  # sqrt(clamped beta_n), 0 at n = 0 (FIXED_LARGE)
    model_time: torch.Tensor  # [T], what the network sees


class DiffusionSchedule:
    """A variance-preserving schedule that is diagonal in the orthonormal DFT basis.

    ``alpha_bar`` may depend on frequency ([T, H, W]) or not ([T, 1, 1]); in the second case every
    filter is a plain scalar product and no FFT runs, which is what makes DDPM one config value away.
    """

    def __init__(
        self,
        alpha_bar: torch.Tensor,
        one_minus_alpha_bar: torch.Tensor | None = None,
        *,
        timesteps: torch.Tensor | None = None,
        train_steps: int | None = None,
    ) -> None:
        alpha_bar = alpha_bar.detach().to("cpu", torch.float64)
        if alpha_bar.ndim != 3 or alpha_bar.shape[1] != alpha_bar.shape[2]:
            raise ValueError(f"alpha_bar must have shape [T, H, H] or [T, 1, 1], got {tuple(alpha_bar.shape)}")
        one_minus = 1.0 - alpha_bar if one_minus_alpha_bar is None else one_minus_alpha_bar.to("cpu", torch.float64)
        if not bool(torch.isfinite(alpha_bar).all()) or not bool(((alpha_bar > 0) & (one_minus > 0)).all()):
            raise ValueError("alpha_bar must be finite and strictly inside (0, 1)")
        if alpha_bar.shape[0] > 1 and not bool((alpha_bar[1:] < alpha_bar[:-1]).all()):
            raise ValueError("alpha_bar must decrease strictly with the step index at every frequency")
        self.alpha_bar = alpha_bar
        self.one_minus_alpha_bar = one_minus
        self.steps = alpha_bar.shape[0]
        self.train_steps = train_steps if train_steps is not None else self.steps
        self.timesteps = torch.arange(self.steps) if timesteps is None else timesteps.to(torch.long).cpu()
        self.exact_betas = betas_from_alpha_bar(alpha_bar, one_minus)
        # The clamp binds only at very large m with T of 3-4 (the DC beta_0 ~ 1 - D(0)^(-1/T)) and in
        # coarse respacing. It limits the FIXED_LARGE variance; the means use the exact ratio
        # alpha_n = ab_n / ab_{n-1}, so the final step stays the exact Fourier x0-prediction.
        self.betas = self.exact_betas.clamp(max=MAX_BETA)
        self._tables: dict[tuple[torch.device, torch.dtype], ScheduleTables] = {}

    @property
    def frequency_dependent(self) -> bool:
        return self.alpha_bar.shape[-1] > 1

    @property
    def clamped_betas(self) -> int:
        """How many table entries the 0.999 clamp changed."""
        return int((self.exact_betas > MAX_BETA).sum())

    def respace(self, steps: int | None) -> "DiffusionSchedule":
        """Keep K evenly spaced steps (first and last included); betas follow from the kept alpha_bar.

        The network still sees the original n * 1000 / T, as in iDDPM's respacing.
        """
        if steps is None:
            return self
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.steps:
            raise ValueError(f"sampling steps K={steps!r} must be an integer in [1, T={self.steps}]")
        if steps == 1:
            keep = torch.tensor([self.steps - 1])
        else:
            keep = torch.linspace(0, self.steps - 1, steps, dtype=torch.float64).round().to(torch.long)
        return DiffusionSchedule(
            self.alpha_bar[keep],
            self.one_minus_alpha_bar[keep],
            timesteps=self.timesteps[keep],
            train_steps=self.train_steps,
        )

    def tables(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ScheduleTables:
        device = torch.device(device)
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = self._build_tables(device, dtype)
        return self._tables[key]

    def _build_tables(self, device: torch.device, dtype: torch.dtype) -> ScheduleTables:
        ab, om = self.alpha_bar, self.one_minus_alpha_bar
        ab_prev = torch.cat([torch.ones_like(ab[:1]), ab[:-1]])
        om_prev = torch.cat([torch.zeros_like(om[:1]), om[:-1]])
        alpha = 1.0 - self.exact_betas
        sigma = self.betas.sqrt()
        sigma[0] = 0.0  # no noise is added on the last reverse step
        half = ab.shape[-1] // 2 + 1

        def put(table: torch.Tensor) -> torch.Tensor:
            return table[..., :half].to(device=device, dtype=dtype).contiguous()

        return ScheduleTables(
            sqrt_ab=put(ab.sqrt()),
            sqrt_one_minus_ab=put(om.sqrt()),
            recip_sqrt_ab=put(ab.rsqrt()),
            sqrt_ab_prev=put(ab_prev.sqrt()),
            sqrt_one_minus_ab_prev=put(om_prev.sqrt()),
            ddim_unit_sigma=put((om_prev / om * self.exact_betas).sqrt()),
            ddpm_x_coef=put(alpha.rsqrt()),
            ddpm_eps_coef=put(self.exact_betas / (om.sqrt() * alpha.sqrt())),
            ddpm_sigma=put(sigma),
            model_time=(self.timesteps.to(torch.float64) * (1000.0 / self.train_steps)).to(device, torch.float32),
        )

    # --- forward process and loss -------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = Re F^-1( sqrt(ab_t) F x0 + sqrt(1 - ab_t) F noise ), per image index t [B]."""
        dtype = compute_dtype(x0)
        tab = self.tables(x0.device, dtype)
        return combine_filtered(
            [(x0, tab.sqrt_ab[t].unsqueeze(1)), (noise, tab.sqrt_one_minus_ab[t].unsqueeze(1))], dtype
        )

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Fourier-domain x0-prediction (X_t - sqrt(1 - ab) E) / sqrt(ab) (fixes P5's pixel-space version)."""
        dtype = compute_dtype(x_t)
        tab = self.tables(x_t.device, dtype)
        recip = tab.recip_sqrt_ab[t].unsqueeze(1)
        return combine_filtered([(x_t, recip), (eps, -tab.sqrt_one_minus_ab[t].unsqueeze(1) * recip)], dtype)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """n * 1000 / T as a float tensor: the timestep the reference UNet receives."""
        return self.tables(t.device).model_time[t]

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"):
        """Uniform step indices, the reference's UniformSampler."""
        return torch.randint(0, self.steps, (batch,), generator=generator).to(device)

    def loss(self, model: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """epsilon-prediction MSE, pixel-space target (Parseval: equal to the per-frequency MSE)."""
        x_t = self.q_sample(x0, t, noise)
        eps_hat = model(x_t, self.model_time(t))
        return (eps_hat.float() - noise.float()).square().mean()


class SPDSchedule(DiffusionSchedule):
    """Shortest Path Diffusion: alpha_bar_n(f) = (1 - D_f^tau_n) / (1 - D_f), D = c1 / (c2 + |f|)^m."""

    def __init__(self, image_size: int, steps: int, *, m: float = 2.0, c1: float = 1.59, c2: float = 0.0086):
        self.spectrum = SpectrumParams(c1=c1, c2=c2, m=m)
        self.image_size = image_size
        self.log_d = log_spectrum_model(freq_radius(image_size), c1, c2, m)
        alpha_bar, one_minus = spd_alpha_bar(self.log_d, check_steps(steps))
        super().__init__(alpha_bar, one_minus)


class DDPMSchedule(DiffusionSchedule):
    """The frequency-independent baseline (iDDPM's linear or cosine schedule), same interface."""

    def __init__(self, steps: int, kind: Literal["linear", "cosine"] = "linear"):
        betas = ddpm_betas(check_steps(steps), kind)
        log_alpha_bar = torch.cumsum(torch.log1p(-betas), 0)
        super().__init__(log_alpha_bar.exp().view(-1, 1, 1), (-torch.expm1(log_alpha_bar)).view(-1, 1, 1))
        self.kind = kind


def ddpm_betas(steps: int, kind: str) -> torch.Tensor:
    if kind == "linear":
        scale = 1000.0 / steps  # iDDPM: the same schedule for any T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
        if float(betas[-1]) >= 1.0:
            raise ValueError(f"the linear DDPM schedule needs steps >= 21 (its last beta is 20/steps), got {steps}")
        return betas
    if kind == "cosine":
        n = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((n + 0.008) / 1.008 * math.pi / 2).square()
        return (1.0 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    raise ValueError(f"DDPM schedule kind={kind!r} must be 'linear' or 'cosine'")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """FFTs and schedule arithmetic run in float32 at least, whatever autocast does around them."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def combine_filtered(terms: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """sum_i Re F^-1(gain_i * F x_i) with one inverse FFT; scalar gains ([..., 1, 1]) skip the FFT."""
    with torch.autocast(terms[0][0].device.type, enabled=False):
        if all(gain.shape[-1] == 1 and gain.shape[-2] == 1 for _, gain in terms):
            return sum(x.to(dtype) * gain for x, gain in terms)
        size = terms[0][0].shape[-2:]
        spectrum = sum(gain * torch.fft.rfft2(x.to(dtype), norm="ortho") for x, gain in terms)
        return torch.fft.irfft2(spectrum, s=size, norm="ortho")


def fourier_filter(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Re F^-1(gain * F x) for a full-spectrum gain [..., H, W] that is symmetric under f -> -f."""
    if gain.shape[-1] > 1:
        gain = gain[..., : gain.shape[-1] // 2 + 1]
    return combine_filtered([(x, gain)], compute_dtype(x))


@dataclass(frozen=True)
class ProcessConfig:
    """The diffusion process of a run: SPD with (m, c1, c2) or the DDPM baseline, T steps."""

    kind: Literal["spd", "ddpm"] = "spd"
    steps: int = 1000
    m: float = 2.0
    c1: float = 1.59
    c2: float = 0.0086
    ddpm_schedule: Literal["linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        if self.kind not in ("spd", "ddpm"):
            raise ValueError(f"process kind={self.kind!r} must be 'spd' or 'ddpm'")
        check_steps(self.steps)
        SpectrumParams(c1=self.c1, c2=self.c2, m=self.m)
        if self.m > MAX_M:
            raise ValueError(f"spectrum exponent m={self.m} is beyond {MAX_M}: natural images have m near 2")
        if self.ddpm_schedule not in ("linear", "cosine"):
            raise ValueError(f"ddpm_schedule={self.ddpm_schedule!r} must be 'linear' or 'cosine'")

    def build(self, image_size: int) -> DiffusionSchedule:
        if self.kind == "spd":
            return SPDSchedule(image_size, self.steps, m=self.m, c1=self.c1, c2=self.c2)
        return DDPMSchedule(self.steps, self.ddpm_schedule)
