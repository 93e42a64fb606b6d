"""The power spectrum of a data set, as training sees it, and the SPD model fitted to it with bootstrap intervals.

Images are scaled as training scales them ([-1, 1], core/..., data/loaders.to_model_range) at the training
resolution; the spectrum is the mean of |F x|^2 (orthonormal DFT) over images and channels. The fit is
core/spectrum.fit_spectrum (c1 and m with c2 fixed, or all three); the confidence intervals come from refitting
on bootstrap resamples of the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.spectrum import fit_spectrum, freq_radius, log_spectrum_model
from ..errors import DataError
from .loaders import DATASETS, DataConfig, load_images, to_model_range

PAPER = {"c1": 1.59, "c2": 0.0086, "m": 2.0}  # the paper's CIFAR-10 model (Das, Fotiadis et al. 2023)


@dataclass(frozen=True)
class SpectrumFit:
    c1: float
    c2: float
    m: float
    residual: float  # RMS of ln P - ln D over the fitted bins
    images: int
    image_size: int
    fitted: tuple[str, ...]  # ("c1", "m") or ("c1", "c2", "m")
    ci: dict = field(default_factory=dict)  # name -> (low, high), 95% bootstrap percentile interval
    bootstrap: int = 0

    def as_dict(self) -> dict:
        return {"c1": self.c1, "c2": self.c2, "m": self.m, "residual": self.residual, "images": self.images,
                "image_size": self.image_size, "fitted": list(self.fitted), "bootstrap": self.bootstrap,
                "ci": {k: list(v) for k, v in self.ci.items()}}


def load_npz_images(path: str | Path) -> np.ndarray:
    """``images`` (or ``arr_0``) of an npz file: uint8 [N, H, W, 3], the format spd_tune.sample writes."""
    path = Path(path)
    try:
        with np.load(path) as archive:
            key = "images" if "images" in archive.files else "arr_0" if "arr_0" in archive.files else None
            if key is None:
                raise DataError(f"{path} holds no 'images' (or 'arr_0') array; found {archive.files}")
            images = archive[key]
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable npz file ({err})") from None
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: expected images [N, H, W, 3], got shape {tuple(images.shape)}")
    if images.dtype != np.uint8:
        if not np.isfinite(images).all():
            raise DataError(f"{path}: the images hold non-finite values")
        raise DataError(f"{path}: expected uint8 images, got {images.dtype}")
    return images


def resolve_images(data: str, *, image_size: int | None = None, count: int | None = None,
                   cache_dir: str | None = None) -> np.ndarray:
    """DATA as the training loaders read it: a data set name, a folder of images, or an npz file."""
    path = Path(data).expanduser()
    if data in DATASETS and data != "folder" and not path.exists():
        size = image_size or (16 if data == "demo" else 64 if data == "imagenet64" else 32)
        root = None
        cfg = DataConfig(name=data, root=root, image_size=size, limit=count, cache_dir=cache_dir,
                         demo_count=count or DataConfig.demo_count)
        images = load_images(cfg)
    elif path.is_dir():
        if image_size is None:
            raise DataError(f"{path} is a folder of images: give the training resolution with --image-size")
        images = load_images(DataConfig(name="folder", root=str(path.resolve()), image_size=image_size, limit=count))
    elif path.is_file() and path.suffix == ".npz":
        images = load_npz_images(path)[:count]
    elif path.exists():
        raise DataError(f"{path} is neither a folder of images nor an npz file")
    else:
        raise DataError(f"{data} is not a data set ({', '.join(d for d in DATASETS if d != 'folder')}), "
                        f"and no such file or folder exists")
    if images.shape[1] != images.shape[2]:
        raise DataError(f"the images are {images.shape[1]}x{images.shape[2]}: the spectrum model needs square images")
    if image_size is not None and images.shape[1] != image_size:
        raise DataError(f"the images are {images.shape[1]} px, not --image-size {image_size}")
    if len(images) < 2:
        raise DataError(f"{len(images)} image(s): a spectrum with a bootstrap interval needs at least 2")
    return images


def image_spectra(images: np.ndarray | torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Per-image power spectra [N, n, n] float64, channels averaged: uint8 [N, H, W, C] images scaled as training
    scales them, or float [N, C, H, W] already in that range (e.g. generated fields)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint8:
            x = to_model_range(torch.from_numpy(np.ascontiguousarray(chunk)))
        else:
            x = torch.as_tensor(chunk)
        power = torch.fft.fft2(x.to(torch.float64), norm="ortho").abs().square().mean(dim=1)
        out.append(power)
    spectra = torch.cat(out)
    if not bool(torch.isfinite(spectra).all()):
        raise DataError("the images give a non-finite power spectrum")
    return spectra


def fit_data(images_u8: np.ndarray | torch.Tensor, *, c2: float | None = PAPER["c2"], bootstrap: int = 200,
             seed: int = 0) -> SpectrumFit:
    """Fit D(f) = c1 / (c2 + |f|)^m to the images' mean spectrum (c2 fixed, or fitted when None), with 95%
    bootstrap percentile intervals over images."""
    spectra = image_spectra(images_u8)
    mean = spectra.mean(dim=0)
    fit = fit_spectrum(mean, c2=c2)
    r = freq_radius(mean.shape[0])
    keep = r > 0 if c2 is not None else torch.ones_like(r, dtype=torch.bool)
    residual = (torch.log(mean[keep]) - log_spectrum_model(r[keep], fit.c1, fit.c2, fit.m)).square().mean().sqrt()
    names = ("c1", "m") if c2 is not None else ("c1", "c2", "m")
    ci = {}
    if bootstrap > 0:
        generator = torch.Generator().manual_seed(seed)
        n = len(spectra)
        flat = spectra.reshape(n, -1)
        draws = {name: [] for name in names}
        for _ in range(bootstrap):
            counts = torch.bincount(torch.randint(0, n, (n,), generator=generator), minlength=n).to(torch.float64)
            resampled = (counts @ flat / n).reshape(mean.shape)
            refit = fit_spectrum(resampled, c2=c2)
            for name in names:
                draws[name].append(getattr(refit, name))
        ci = {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for name, v in draws.items()}
    return SpectrumFit(c1=fit.c1, c2=fit.c2, m=fit.m, residual=float(residual), images=len(images_u8),
                       image_size=int(mean.shape[0]), fitted=names, ci=ci, bootstrap=bootstrap)


def radial_profile(power: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(radius, mean power) over the non-DC bins, one point per distinct |f|."""
    r = freq_radius(power.shape[0]).reshape(-1).numpy()
    p = power.reshape(-1).numpy()
    radii = np.unique(np.round(r[r > 0], 9))
    return radii, np.array([p[np.isclose(r, radius)].mean() for radius in radii])


def plot_fit(images_u8: np.ndarray, fit: SpectrumFit, path: str | Path, title: str) -> Path:
    """Log-log radial spectrum with the fitted model and the paper's CIFAR-10 model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    power = image_spectra(images_u8).mean(dim=0)
    radii, values = radial_profile(power)
    rr = torch.from_numpy(radii)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(radii, values, ".", ms=4, color="#444", label="data (mean over images, channels)")
    ci = fit.ci.get("m")
    band = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    ax.loglog(radii, torch.exp(log_spectrum_model(rr, fit.c1, fit.c2, fit.m)).numpy(), lw=1.6,
              label=f"fit: c1={fit.c1:.3g}, c2={fit.c2:.3g}, m={fit.m:.3f}{band}")
    ax.loglog(radii, torch.exp(log_spectrum_model(rr, **PAPER)).numpy(), "--", lw=1.2,
              label="paper's CIFAR-10 model: c1=1.59, c2=0.0086, m=2")
    ax.set_xlabel("|f| (cycles per pixel)")
    ax.set_ylabel("power")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def describe(fit: SpectrumFit) -> list[str]:
    """One readable line per constant, then the residual."""
    lines = []
    for name in ("c1", "c2", "m"):
        value = getattr(fit, name)
        if name in fit.ci:
            lo, hi = fit.ci[name]
            lines.append(f"{name:<3} = {value:.4g}   95% interval [{lo:.4g}, {hi:.4g}] ({fit.bootstrap} bootstrap "
                         f"resamples of {fit.images} images)")
        else:
            lines.append(f"{name:<3} = {value:.4g}   (fixed)")
    bins = "frequency bins" if "c2" in fit.fitted else "non-DC frequency bins"
    lines.append(f"residual: RMS of ln P - ln D = {fit.residual:.4f} over the {bins} of {fit.image_size}x"
                 f"{fit.image_size} images")
    return lines


def check_finite(fit: SpectrumFit) -> None:
    if not all(math.isfinite(v) for v in (fit.c1, fit.c2, fit.m)):
        raise DataError("the fit did not converge to finite constants")
