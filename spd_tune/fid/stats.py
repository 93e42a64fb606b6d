"""Feature statistics that merge across workers, and the Fréchet distance between two Gaussians.

float64 throughout. ``RunningStats`` keeps (n, mean, M) with M the centred scatter matrix and merges with
Chan, Golub & LeVeque's update, so each worker scores its own share of samples and the driver merges
the results exactly, in any order. The Fréchet distance uses symmetric eigendecompositions instead of
scipy's sqrtm (minutes at d = 2048 on a CPU, and broken on scipy >= 1.18).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class RunningStats:
    dims: int
    n: int = 0
    mean: np.ndarray | None = None
    scatter: np.ndarray | None = None  # sum of (x - mean)(x - mean)^T

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dims, dtype=np.float64)
        if self.scatter is None:
            self.scatter = np.zeros((self.dims, self.dims), dtype=np.float64)

    def update(self, features: np.ndarray) -> "RunningStats":
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.dims:
            raise ValueError(f"expected features [N, {self.dims}], got {features.shape}")
        if len(features) == 0:
            return self
        mean = features.mean(axis=0)
        centred = features - mean
        return self.merge(RunningStats(self.dims, len(features), mean, centred.T @ centred))

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Combine in place with another worker's statistics (Chan et al.); returns self."""
        if other.dims != self.dims:
            raise ValueError(f"cannot merge {other.dims}-d statistics into {self.dims}-d ones")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.scatter = other.n, other.mean.copy(), other.scatter.copy()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        self.n = n
        return self

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (ddof = 1, as pytorch-fid)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        return self.scatter / (self.n - 1)

    def state(self) -> dict:
        """Plain arrays, for shipping between Ray workers or saving."""
        return {"dims": self.dims, "n": self.n, "mean": self.mean, "scatter": self.scatter}

    @classmethod
    def from_state(cls, state: dict) -> "RunningStats":
        return cls(int(state["dims"]), int(state["n"]), np.asarray(state["mean"], np.float64),
                   np.asarray(state["scatter"], np.float64))


def merge_all(parts: list[RunningStats]) -> RunningStats:
    if not parts:
        raise ValueError("nothing to merge")
    total = RunningStats(parts[0].dims)
    for part in parts:
        total.merge(part)
    return total


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr (S1^(1/2) S2 S1^(1/2))^(1/2), in float64.

    Tr sqrt(S1 S2) is computed as the sum of square roots of the eigenvalues of the symmetric matrix
    S1^(1/2) S2 S1^(1/2), which has the same spectrum. Non-finite input gives inf at once.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        return math.inf
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
