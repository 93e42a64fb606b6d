"""Known answers for the spectrum fit with what cameras and data-set pipelines do to images.

Stationary Gaussian fields of a known D(f) = c1 / (c2 + |f|)^m are drawn at twice the target size, blurred by a
Gaussian of ``blur_px`` pixels (a lens and demosaicing, at the sensor's resolution), reduced 2x with a resampling
filter (``lanczos``, ``bicubic``, ``bilinear`` or ``box``, PIL's, as data-set pipelines resize), and stored as
uint8. |f| is in cycles per image, which the reduction keeps, so the fields' m is the answer a fit should give
below the frequencies where the chain's low-pass acts (docs/method.md, "Spectrum fit").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.spectrum import freq_radius, gaussian_field, log_spectrum_model
from .gaussian_fields import field_c1

FILTERS = ("lanczos", "bicubic", "bilinear", "box")


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Periodic Gaussian blur of [..., n, n] by its exact transfer function exp(-2 pi^2 sigma^2 |k / n|^2)."""
    if sigma_px <= 0:
        return x
    n = x.shape[-1]
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    transfer = torch.exp(-2.0 * math.pi ** 2 * sigma_px ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * transfer).real


def reduce_2x(x: torch.Tensor, resample: str) -> torch.Tensor:
    """[N, C, 2n, 2n] -> [N, C, n, n] with PIL's filter (float images, mode "F")."""
    from PIL import Image

    filters = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "box": Image.BOX}
    if resample not in filters:
        raise ValueError(f"unknown resampling filter {resample!r}; known: {', '.join(FILTERS)}")
    count, channels, size = x.shape[0], x.shape[1], x.shape[-1]
    arrays = x.to(torch.float32).numpy()
    out = np.empty((count, channels, size // 2, size // 2), np.float32)
    for i in range(count):
        for c in range(channels):
            image = Image.fromarray(arrays[i, c], mode="F")
            out[i, c] = np.asarray(image.resize((size // 2, size // 2), resample=filters[resample]))
    return torch.from_numpy(out).to(torch.float64)


def imaged_fields(count: int, size: int, *, m: float, c2: float = 1.0, std: float = 0.3, blur_px: float = 0.75,
                  resample: str | None = "lanczos", seed: int = 0) -> np.ndarray:
    """uint8 [count, size, size, 3]: fields of exponent m passed through blur, 2x reduction and quantisation.
    ``resample=None`` skips the chain (no blur, no reduction): the pure fields at ``size``."""
    source = size if resample is None else 2 * size
    log_d = log_spectrum_model(freq_radius(source), field_c1(source, m, c2, std), c2, m)
    x = gaussian_field(count, 3, source, log_d, torch.Generator().manual_seed(int(seed)))
    if resample is not None:
        x = reduce_2x(gaussian_blur(x, blur_px), resample)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
