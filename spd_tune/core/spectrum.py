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


# Frequency bands as fractions of the Nyquist frequency n/2 (cycles per image): the low, middle and near-Nyquist
# thirds. "all" also keeps the corner bins beyond n/2 on the diagonals.
BANDS = {"all": (0.0, math.inf), "low": (0.0, 1.0 / 3.0), "mid": (1.0 / 3.0, 2.0 / 3.0), "high": (2.0 / 3.0, 1.0)}
ESTIMATORS = ("ls", "whittle")


def band_limits(band: str | tuple[float, float] | None, n: int) -> tuple[float, float]:
    """(lo, hi] in cycles per image for a named band (BANDS) at image size n, or an explicit (lo, hi)."""
    if band is None:
        band = "all"
    if isinstance(band, str):
        if band not in BANDS:
            raise ValueError(f"unknown band {band!r}; known: {', '.join(BANDS)}, or (lo, hi) in cycles per image")
        lo, hi = BANDS[band]
        return lo * n / 2.0, hi * n / 2.0 if math.isfinite(hi) else math.inf
    lo, hi = (float(v) for v in band)
    if not (math.isfinite(lo) and lo >= 0 and hi > lo):
        raise ValueError(f"band ({lo}, {hi}) must satisfy 0 <= lo < hi (cycles per image)")
    return lo, hi


def fit_spectrum(power: torch.Tensor, *, c2: float | None = None, include_dc: bool | None = None,
                 band: str | tuple[float, float] | None = None, estimator: str = "ls") -> SpectrumParams:
    """Fit D(f) = c1 / (c2 + |f|)^m to a mean power spectrum [n, n] over the bins with lo < |f| <= hi.

    Estimators:
    - ``ls``: least squares of ln P = ln c1 - m ln(c2 + |f|) in log space;
    - ``whittle``: the Gaussian (Whittle) likelihood of the stationary model SPD assumes (Sigma_0 = F D F*):
      each bin's periodogram is D(f) times an exponential variable, so the negative log-likelihood is
      sum ln D + P / D. c1 is profiled out in closed form (c1 = mean of P (c2 + |f|)^m), m minimises a convex
      function of one variable.
    Both give every 2-D bin the same weight; the band decides which bins (docs/method.md, "Spectrum fit").
    With ``c2`` given, c1 and m are fitted on the non-DC bins. Without it all three are fitted, DC included: c2 is
    only identifiable through the DC bin, and the three-parameter fit is ill-posed when c2 is much smaller than 1
    (docs/method.md), so prefer a fixed c2 for real photos.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if power.ndim != 2 or power.shape[0] != power.shape[1]:
        raise ValueError(f"expected a square [n, n] power spectrum, got shape {tuple(power.shape)}")
    power = power.to(torch.float64)
    if not bool(torch.isfinite(power).all()) or bool((power <= 0).any()):
        raise ValueError("power spectrum must be finite and strictly positive in every bin")
    r = freq_radius(power.shape[0])
    if include_dc is None:
        include_dc = c2 is None
    lo, hi = band_limits(band, power.shape[0])
    keep = (r > lo) & (r <= hi)
    if include_dc:
        keep = keep | (r == 0)
    else:
        keep = keep & (r > 0)
    log_p, r = torch.log(power[keep]), r[keep]
    if estimator == "whittle":
        return _whittle(log_p, r, c2)
    if c2 is not None:
        return _fit_fixed_c2(log_p, r, c2)
    return _fit_all_three(log_p, r)


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    top = x.max()
    return top + torch.log(torch.exp(x - top).mean())


def _whittle_profile(log_p: torch.Tensor, log_r: torch.Tensor, m: float) -> tuple[float, float]:
    """(negative log-likelihood per bin with c1 profiled out, ln c1) at m, for x = ln(c2 + |f|)."""
    log_c1 = _log_mean_exp(log_p + m * log_r)
    return float(log_c1 - m * log_r.mean()), float(log_c1)


def _whittle(log_p: torch.Tensor, r: torch.Tensor, c2: float | None) -> SpectrumParams:
    from scipy.optimize import minimize, minimize_scalar

    if c2 is not None:
        log_r = torch.log(c2 + r)
        if float(log_r.max() - log_r.min()) <= 0:
            raise ValueError("need at least two distinct frequency radii to fit the spectrum")
        best = minimize_scalar(lambda m: _whittle_profile(log_p, log_r, m)[0], bounds=(0.0, 16.0), method="bounded",
                               options={"xatol": 1e-7})
        m = float(best.x)
        return SpectrumParams(c1=math.exp(_whittle_profile(log_p, log_r, m)[1]), c2=c2, m=m)
    start = _fit_all_three(log_p, r)
    best = minimize(lambda p: _whittle_profile(log_p, torch.log(math.exp(p[0]) + r), p[1])[0],
                    x0=[math.log(start.c2), start.m], method="L-BFGS-B",
                    bounds=[(math.log(1e-6), math.log(1e3)), (0.05, 16.0)])
    log_c2, m = (float(v) for v in best.x)
    log_c1 = _whittle_profile(log_p, torch.log(math.exp(log_c2) + r), m)[1]
    return SpectrumParams(c1=math.exp(log_c1), c2=math.exp(log_c2), m=m)


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
