"""The SPD power-spectrum model D(|f|) = c1 / (c2 + |f|)^m and its fit to data.

Units follow the reference code: integer cycles per image from ``fftfreq(n, d=1/n)``,
images in [-1, 1], orthonormal 2-D DFT (docs/method.md, "Units and the spectrum model").
Only torch is imported at module level so that the math runs with torch alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpectrumParams:
    """The three constants of the spectrum model (paper defaults for CIFAR-10)."""

    c1: float = 1.59
    c2: float = 0.0086
    m: float = 2.0

    def __post_init__(self) -> None:
        check_spectrum_params(self.c1, self.c2, self.m)


def check_spectrum_params(c1: float, c2: float, m: float) -> None:
    """Reject constants for which D is not a positive, finite, decreasing function of |f|."""
    for name, value in (("c1", c1), ("c2", c2), ("m", m)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"spectrum parameter {name}={value!r} must be a finite number > 0")


def freq_radius(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Radial frequency |f| in integer cycles per image, [n, n], FFT order."""
    if n < 2:
        raise ValueError(f"image size {n} must be at least 2")
    f = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).to(dtype)


def log_spectrum_model(r: torch.Tensor, c1: float = 1.59, c2: float = 0.0086, m: float = 2.0) -> torch.Tensor:
    """ln D(r) = ln c1 - m ln(c2 + r), in float64.

    The schedule works with ln D rather than D: D(0) = c1 / c2^m reaches 1e12 and more at large m,
    and ln D is what the stable alpha_bar formula needs anyway.
    """
    check_spectrum_params(c1, c2, m)
    r = r.to(torch.float64)
    return math.log(c1) - m * torch.log(c2 + r)


def spectrum_model(r: torch.Tensor, c1: float = 1.59, c2: float = 0.0086, m: float = 2.0) -> torch.Tensor:
    """D(r) = c1 / (c2 + r)^m in float64."""
    return torch.exp(log_spectrum_model(r, c1, c2, m))


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean of |F x|^2 over images and channels (ortho DFT), [n, n] float64, FFT order."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images [K, C, n, n], got shape {tuple(images.shape)}")
    spectrum = torch.fft.fft2(images.to(torch.float64), norm="ortho").abs().square()
    return spectrum.mean(dim=(0, 1))


def gaussian_field(
    batch: int, channels: int, n: int, log_d: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Samples of N(0, F^H diag(D) F): white noise filtered by sqrt(D). float64 [batch, channels, n, n].

    Real white noise is Hermitian-symmetric in Fourier space and sqrt(D) is symmetric under f -> -f,
    so the result is real and its expected power spectrum is exactly D.
    """
    noise = torch.randn(batch, channels, n, n, generator=generator, dtype=torch.float64)
    gain = torch.exp(0.5 * log_d.to(torch.float64))
    return torch.fft.ifft2(gain * torch.fft.fft2(noise, norm="ortho"), norm="ortho").real


def fit_spectrum(power: torch.Tensor, *, c2: float | None = None, include_dc: bool | None = None) -> SpectrumParams:
    """Fit ln P = ln c1 - m ln(c2 + |f|) by least squares in log space.

    With ``c2`` given, (c1, m) follow in closed form from the non-DC bins. Without it all three are
    fitted, DC included: c2 is only identifiable through the DC bin, and the three-parameter fit is
    ill-posed when c2 is much smaller than 1 (docs/method.md, "Spectrum fit"), so prefer a fixed c2 for real photos.
    """
    if power.ndim != 2 or power.shape[0] != power.shape[1]:
        raise ValueError(f"expected a square [n, n] power spectrum, got shape {tuple(power.shape)}")
    power = power.to(torch.float64)
    if not bool(torch.isfinite(power).all()) or bool((power <= 0).any()):
        raise ValueError("power spectrum must be finite and strictly positive in every bin")
    r = freq_radius(power.shape[0])
    if include_dc is None:
        include_dc = c2 is None
    keep = torch.ones_like(r, dtype=torch.bool) if include_dc else r > 0
    log_p, r = torch.log(power[keep]), r[keep]
    if c2 is not None:
        return _fit_fixed_c2(log_p, r, c2)
    return _fit_all_three(log_p, r)


def _fit_fixed_c2(log_p: torch.Tensor, r: torch.Tensor, c2: float) -> SpectrumParams:
    x = torch.log(c2 + r)
    x_mean, y_mean = x.mean(), log_p.mean()
    var_x = (x - x_mean).square().sum()
    if float(var_x) <= 0:
        raise ValueError("need at least two distinct frequency radii to fit the spectrum")
    slope = ((x - x_mean) * (log_p - y_mean)).sum() / var_x
    m = -float(slope)
    c1 = math.exp(float(y_mean - slope * x_mean))
    return SpectrumParams(c1=c1, c2=c2, m=m)


def _fit_all_three(log_p: torch.Tensor, r: torch.Tensor) -> SpectrumParams:
    import numpy as np
    from scipy.optimize import least_squares

    y, rr = log_p.numpy(), r.numpy()

    def residual(p: np.ndarray) -> np.ndarray:
        log_c1, log_c2, m = p
        return log_c1 - m * np.log(np.exp(log_c2) + rr) - y

    start = _fit_fixed_c2(log_p, r, 1.0)
    result = least_squares(
        residual,
        x0=[math.log(start.c1), 0.0, min(max(start.m, 0.1), 6.0)],
        bounds=([-50.0, math.log(1e-6), 0.05], [50.0, math.log(1e3), 8.0]),
        x_scale="jac",
    )
    log_c1, log_c2, m = (float(v) for v in result.x)
    return SpectrumParams(c1=math.exp(log_c1), c2=math.exp(log_c2), m=m)
