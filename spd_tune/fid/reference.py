"""Reference statistics, computed once per (images, features) and cached under a content hash.

The key hashes the exact uint8 bytes of the reference images together with the feature settings and
the weights' sha256, so a changed data set, count or weights file can never reuse stale statistics.
Files are written to a temporary name and renamed, so concurrent trials never read a partial file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write
from .inception import InceptionFeatures
from .stats import RunningStats, frechet_distance

CACHE_ENV = "SPD_TUNE_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spd_tune") / "fid_stats"


def stats_key(images: np.ndarray, features: InceptionFeatures) -> str:
    from pytorch_fid import __version__ as pytorch_fid_version

    images = np.ascontiguousarray(images)
    header = {
        "shape": list(images.shape), "dtype": str(images.dtype), "dims": features.spec.dims,
        "weights": features.weights_id, "resize": "bilinear-299", "pytorch_fid": pytorch_fid_version,
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def reference_stats(images: np.ndarray, features: InceptionFeatures, cache_dir: str | Path | None = None,
                    ) -> tuple[RunningStats, Path]:
    """Statistics of uint8 reference images, from the cache when present. Returns (stats, cache file)."""
    key = stats_key(images, features)
    path = Path(cache_dir or default_cache_dir()) / f"fid_stats_{key[:16]}.npz"
    if path.is_file():
        with np.load(path) as f:
            if str(f["key"]) == key:
                return RunningStats(int(f["dims"]), int(f["n"]), f["mu"], f["scatter"]), path
    stats = features.stats(images)
    with atomic_write(path) as f:  # mu / sigma as pytorch-fid's own stats files
        np.savez(f, mu=stats.mean, sigma=stats.covariance, scatter=stats.scatter, n=stats.n,
                 dims=stats.dims, key=key, metric=features.metric_name)
    return stats, path


def score(sample_stats: RunningStats, ref_stats: RunningStats) -> float:
    """Fréchet distance of two statistics; inf if either is unusable."""
    if sample_stats.n < 2 or ref_stats.n < 2:
        return math.inf
    return frechet_distance(sample_stats.mean, sample_stats.covariance, ref_stats.mean, ref_stats.covariance)
