"""The data sets by name, and the config that names one: how each is loaded and checked, where its files are by
default, its natural size, and whether it has a metric of its own. A new data set is one entry of ``REGISTRY``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dead_leaves import cached_dead_leaves
from .gaussian_fields import check_field_params, gaussian_fields
from .loaders import (
    cifar10_available,
    default_data_root,
    image_folder_available,
    imagenet64_available,
    load_cifar10,
    load_image_folder,
    load_imagenet64,
)

GAUSS_FD = "gauss_fd"  # the exact Fréchet distance to a data set's own known Gaussian (fid/spectral.py)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on. ``root`` is the data folder (absolute once resolved)."""

    name: str = "demo"
    root: str | None = None
    image_size: int = 32
    split: str = "train"  # cifar10: train | test; imagenet64: train | val
    limit: int | None = None  # first N images only
    download: bool = True  # cifar10 only: fetch it into the data root when it is not there
    demo_count: int = 4096  # demo and gaussian: how many images are generated
    seed: int = 0
    cache_dir: str | None = None  # where generated demo images are kept
    field_m: float = 2.6  # gaussian: the fields' spectrum D(f) = c1 / (c2 + |f|)^m, c1 set by field_std
    field_c2: float = 1.0
    field_std: float = 0.3

    def __post_init__(self) -> None:
        if self.name not in REGISTRY:
            raise DataError(f"data set {self.name!r} is not one of {list(REGISTRY)}")
        spec = REGISTRY[self.name]
        if spec.needs_root and not self.root:
            raise DataError(f"data set {self.name!r} needs a data folder (--data-dir)")
        if spec.fixed_size and self.image_size != spec.size:
            raise DataError(f"{self.name} images are {spec.size}x{spec.size}, got image_size={self.image_size}")
        if self.limit is not None and self.limit < 1:
            raise DataError(f"limit={self.limit} must be a positive number of images")
        problem = spec.check(self) if spec.check else None
        if problem:
            raise DataError(f"{self.name} data: {problem}")


@dataclass(frozen=True)
class DataSet:
    name: str
    load: Callable[[DataConfig], np.ndarray]  # uint8 [N, H, W, 3]
    size: int | None = 32  # the natural image size (the default resolution); None: the images' own (a folder)
    fixed_size: bool = False  # only its natural size can be loaded
    needs_root: bool = False  # its files must be given (--data-dir); else generated or downloaded
    default_root: Callable[[], Path] | None = None  # where its files go when no root is given (a download)
    available: Callable[[DataConfig], None] | None = None  # fails fast when the data cannot be had
    metric: str | None = None  # scored by a metric of its own, with no network and no reference set
    check: Callable[[DataConfig], str | None] | None = None  # what is wrong with its own keys, or None


def _generated(cfg: DataConfig) -> int:
    return min(cfg.demo_count, cfg.limit or cfg.demo_count)


REGISTRY: dict[str, DataSet] = {d.name: d for d in (
    DataSet("cifar10", lambda c: load_cifar10(c.root or default_data_root(), train=c.split == "train",
                                              download=c.download),
            size=32, fixed_size=True, default_root=default_data_root,
            available=lambda c: cifar10_available(c.root, c.split, c.download)),
    DataSet("imagenet64", lambda c: load_imagenet64(c.root, split=c.split, image_size=c.image_size),
            size=64, needs_root=True, available=lambda c: imagenet64_available(c.root, c.split)),
    DataSet("folder", lambda c: load_image_folder(c.root, c.image_size), size=None, needs_root=True,
            available=lambda c: image_folder_available(c.root)),
    DataSet("demo", lambda c: cached_dead_leaves(_generated(c), c.image_size, seed=c.seed, cache_dir=c.cache_dir),
            size=16),
    DataSet("gaussian", lambda c: gaussian_fields(_generated(c), c.image_size, m=c.field_m, c2=c.field_c2,
                                                  std=c.field_std, seed=c.seed),
            size=16, metric=GAUSS_FD, check=lambda c: check_field_params(c.field_m, c.field_c2, c.field_std)),
)}
DATASETS = tuple(REGISTRY)


def dataset(name: str) -> DataSet:
    return REGISTRY[name]


def load_images(cfg: DataConfig) -> np.ndarray:
    """The data set as uint8 [N, H, W, 3]."""
    images = REGISTRY[cfg.name].load(cfg)
    return images[: cfg.limit] if cfg.limit else images


def check_available(cfg: DataConfig) -> None:
    """Fail fast, before any worker starts, when the data cannot be had (downloading CIFAR-10 if allowed) or is
    visibly broken: CIFAR-10 files with the wrong checksum, a folder without a single image or npz batch."""
    spec = REGISTRY[cfg.name]
    if spec.available:
        spec.available(cfg)
