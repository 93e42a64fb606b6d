"""The exact metric of the ``gaussian`` data set: the Fréchet distance between the generated images' stationary
Gaussian fit and the true Gaussian the data was drawn from. Named ``gauss_fd``, never FID.

Why this form: the data is N(0, F^H diag(D) F) per channel, a stationary Gaussian, so its covariance is diagonal
in the Fourier basis. A full pixel covariance at 16 px has 768 dimensions and is rank-deficient from a few hundred
samples; the stationary fit has one number per frequency, the images' mean power E|F x|^2 (uncentred: a mean
offset shows up in the DC bin), and is well estimated from a few hundred. For two Gaussians that are diagonal in
the same basis the Fréchet distance has a closed form:

    FD = sum over channels and frequencies of (sqrt(P1(f)) - sqrt(P2(f)))^2

which tests/test_gaussian_data.py checks against the general pixel-space formula. Mergeable across workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

METRIC = "gauss_fd"


@dataclass
class SpectralStats:
    """Running sum of |F x|^2 per channel and frequency (orthonormal DFT, images in [-1, 1]) and the count."""

    power_sum: np.ndarray | None = None  # [C, n, n] float64
    n: int = 0

    def add(self, images_u8: torch.Tensor) -> None:
        x = images_u8.permute(0, 3, 1, 2).to(torch.float64).div(127.5).sub(1.0)
        power = torch.fft.fft2(x, norm="ortho").abs().square().sum(dim=0).cpu().numpy()
        self.power_sum = power if self.power_sum is None else self.power_sum + power
        self.n += len(images_u8)

    def state(self) -> dict:
        return {"power_sum": self.power_sum, "n": self.n}

    @classmethod
    def from_state(cls, state: dict) -> SpectralStats:
        return cls(state["power_sum"], state["n"])

    @staticmethod
    def merge(parts: list[SpectralStats]) -> SpectralStats:
        filled = [p for p in parts if p.n]
        if not filled:
            return SpectralStats()
        return SpectralStats(sum(p.power_sum for p in filled), sum(p.n for p in filled))

    def power(self) -> np.ndarray:
        if not self.n:
            raise ValueError("no images")
        return self.power_sum / self.n


def stationary_frechet(power_a: np.ndarray, power_b: np.ndarray) -> float:
    """FD between two zero-mean Gaussians diagonal in the Fourier basis, given their powers [C, n, n] (or [n, n])."""
    a, b = np.asarray(power_a, np.float64), np.asarray(power_b, np.float64)
    if a.shape != b.shape or (a < 0).any() or (b < 0).any() or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    return float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def gauss_fd(stats: SpectralStats, true_log_power: torch.Tensor) -> float:
    """The generated images' stationary fit against the true spectrum D (the same in every channel)."""
    power = stats.power()
    truth = np.broadcast_to(torch.exp(true_log_power).numpy(), power.shape)
    return stationary_frechet(power, truth)
