"""The offline demo data set: dead-leaves images, a procedural model of natural images.

Occluding discs with radii drawn from p(r) ~ r^-3 produce the scale invariance, and so the ~1/f^m power
spectrum, of natural photographs (Lee, Mumford & Huang 2001). The images are generated from a seed at run
time: nothing is downloaded and no image files ship with the project. docs/data.md records the fitted m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fsutil import atomic_write

CHUNK = 256  # images rendered together (bounds memory at 64 px)
VERSION = 1  # bump when the generator changes, so cached copies are not reused


def dead_leaves(count: int, size: int, *, seed: int = 0, max_discs: int = 2000) -> np.ndarray:
    """``count`` RGB dead-leaves images, uint8 [count, size, size, 3], fully determined by ``seed``.

    Discs are painted front to back: each one fills only pixels no nearer disc covers, and rendering stops
    once every pixel is covered.
    """
    if count < 1 or size < 2:
        raise ValueError(f"need count >= 1 and size >= 2, got count={count}, size={size}")
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        out[start: start + n] = _render(rng, n, size, max_discs)
    return out


def _render(rng: np.random.Generator, n: int, size: int, max_discs: int) -> np.ndarray:
    r_min, r_max = 2.0, 1.5 * size  # r_min below ~2 px adds white-noise texture and flattens the spectrum
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = np.zeros((n, size, size, 3), dtype=np.float32)
    uncovered = np.ones((n, size, size), dtype=bool)
    for _ in range(max_discs):
        u = rng.random(n)
        # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
        radius = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        cy, cx = (rng.uniform(-0.25 * size, 1.25 * size, (2, n))).astype(np.float32)
        colour = _colours(rng, n)
        inside = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2 <= (radius**2)[:, None, None]
        paint = inside & uncovered
        np.copyto(image, colour[:, None, None, :], where=paint[..., None])
        uncovered &= ~inside
        if not uncovered.any():
            break
    image[uncovered] = 0.5
    return np.round(image * 255).clip(0, 255).astype(np.uint8)


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Correlated RGB: a luminance in [0.05, 0.95] plus a modest chroma offset, as in natural scenes."""
    luminance = rng.uniform(0.05, 0.95, (n, 1))
    chroma = rng.normal(0.0, 0.12, (n, 3))
    return np.clip(luminance + chroma - chroma.mean(axis=1, keepdims=True), 0.0, 1.0).astype(np.float32)


def cached_dead_leaves(count: int, size: int, *, seed: int = 0, cache_dir: str | Path | None = None) -> np.ndarray:
    """``dead_leaves`` through an npz cache (written atomically), as rendering 4096 images takes ~30 s on a CPU."""
    if cache_dir is None:
        return dead_leaves(count, size, seed=seed)
    path = Path(cache_dir) / f"dead_leaves_v{VERSION}_{count}x{size}_seed{seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["images"]
    images = dead_leaves(count, size, seed=seed)
    with atomic_write(path) as f:
        np.savez(f, images=images)
    return images
