"""The ``gaussian`` data set: stationary Gaussian random fields whose power spectrum is exactly the SPD model
D(f) = c1 / (c2 + |f|)^m, for a chosen m. A search on it has a known answer (docs/method.md).

Each channel of each image is white noise filtered by sqrt(D) (core/spectrum.gaussian_field), generated from a seed
alone. c1 is set by the pixel standard deviation asked for: by Parseval, a pixel's variance is the mean of D over
the n^2 frequency bins. The images are stored as uint8, like every data set; with c2 >= 1 and a pixel std near 0.3
the quantisation noise and the clipping at ±1 (3.3 standard deviations) leave the spectrum as asked (measured in
docs/method.md with python -m spd_tune.spectrum).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.spectrum import freq_radius, gaussian_field, log_spectrum_model

BATCH = 1024


def field_c1(size: int, m: float, c2: float, std: float) -> float:
    """The c1 that gives pixels of standard deviation ``std`` (in the [-1, 1] model range)."""
    shape = torch.exp(-m * torch.log(c2 + freq_radius(size))).mean().item()  # mean of D / c1 over the bins
    return std * std / shape


def true_log_power(size: int, m: float, c2: float, std: float) -> torch.Tensor:
    """ln D(f) of the fields, [size, size] float64 in FFT order: the spectrum every channel is drawn with."""
    return log_spectrum_model(freq_radius(size), field_c1(size, m, c2, std), c2, m)


def gaussian_fields(count: int, size: int, *, m: float, c2: float, std: float, seed: int = 0) -> np.ndarray:
    """``count`` images uint8 [N, size, size, 3], deterministic in (count, size, m, c2, std, seed)."""
    log_d = true_log_power(size, m, c2, std)
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    for start in range(0, count, BATCH):
        x = gaussian_field(min(BATCH, count - start), 3, size, log_d, generator)
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


def check_field_params(m: float, c2: float, std: float) -> str | None:
    """What is wrong with the field's constants, or None."""
    if not (math.isfinite(m) and 0 < m <= 12):
        return f"field_m={m} must be in (0, 12]"
    if not (math.isfinite(c2) and c2 > 0):
        return f"field_c2={c2} must be > 0 (>= 1 keeps uint8 storage faithful to the spectrum)"
    if not (math.isfinite(std) and 0 < std <= 0.5):
        return f"field_std={std} must be in (0, 0.5] (pixels live in [-1, 1])"
    return None
