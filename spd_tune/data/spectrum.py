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

from ..core.spectrum import BANDS, ESTIMATORS, band_limits, fit_spectrum, freq_radius, log_spectrum_model
from ..errors import DataError
from .loaders import IMAGE_SUFFIXES, to_model_range
from .registry import REGISTRY, DataConfig, load_images

PAPER = {"c1": 1.59, "c2": 0.0086, "m": 2.0}  # the paper's CIFAR-10 model (Das, Fotiadis et al. 2023)


DEFAULT_ESTIMATOR = "whittle"  # the Gaussian likelihood of the model SPD assumes (core/spectrum.fit_spectrum)
DEFAULT_BAND = "low"  # |f| up to a third of Nyquist: below where the imaging chain's low-pass acts (docs/method.md)
BAND_SLOPES = ("low", "mid", "high")  # the bands whose slopes the misfit check compares
RESIDUAL_LIMIT = 0.25  # RMS of ln P - ln D beyond sampling noise (a factor of 1.28) over every non-DC bin
# Two bands' slopes disagree when their 95% intervals are disjoint and they differ by more than this: with 1000s of
# images the intervals shrink until a few hundredths of m, which change nothing in a search, would be "significant".
SLOPE_TOLERANCE = 0.25


@dataclass(frozen=True)
class SpectrumFit:
    """The default estimator's constants at top level, every estimator and band in ``estimators``."""

    c1: float
    c2: float
    m: float
    residual: float  # RMS of ln P - ln D over every non-DC bin (with c2 fitted: every bin)
    images: int
    image_size: int
    fitted: tuple[str, ...]  # ("c1", "m") or ("c1", "c2", "m")
    ci: dict = field(default_factory=dict)  # name -> (low, high), 95% bootstrap percentile interval
    bootstrap: int = 0
    estimator: str = DEFAULT_ESTIMATOR
    band: tuple[float, float] = (0.0, math.inf)  # cycles per image, lo < |f| <= hi
    estimators: dict = field(default_factory=dict)  # name -> {m, ci, band, c1, estimator}
    noise: float = 0.0  # the bootstrap's estimate of the residual that sampling noise alone gives
    misfit: bool = False
    misfit_reason: str = ""

    def as_dict(self) -> dict:
        return {"c1": self.c1, "c2": self.c2, "m": self.m, "residual": self.residual, "images": self.images,
                "image_size": self.image_size, "fitted": list(self.fitted), "bootstrap": self.bootstrap,
                "ci": {k: list(v) for k, v in self.ci.items()}, "estimator": self.estimator,
                "band": _band_json(self.band), "estimators": self.estimators, "residual_noise": self.noise,
                "misfit": self.misfit, "misfit_reason": self.misfit_reason}

    @classmethod
    def from_dict(cls, d: dict) -> SpectrumFit:
        band = d.get("band") or [0.0, None]
        return cls(c1=d["c1"], c2=d["c2"], m=d["m"], residual=d["residual"], images=d["images"],
                   image_size=d["image_size"], fitted=tuple(d["fitted"]), ci={k: tuple(v) for k, v in d["ci"].items()},
                   bootstrap=d["bootstrap"], estimator=d.get("estimator", "ls"),
                   band=(float(band[0]), math.inf if band[1] is None else float(band[1])),
                   estimators=d.get("estimators", {}), noise=d.get("residual_noise", 0.0),
                   misfit=bool(d.get("misfit", False)), misfit_reason=d.get("misfit_reason", ""))


def _band_json(band: tuple[float, float]) -> list:
    """JSON has no infinity: an open upper end is null."""
    return [float(band[0]), float(band[1]) if math.isfinite(band[1]) else None]


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
    named = [name for name, spec in REGISTRY.items() if spec.size is not None]  # a folder is a path, not a name
    if data in named and not path.exists():
        size = image_size or REGISTRY[data].size
        root = None
        cfg = DataConfig(name=data, root=root, image_size=size, limit=count, cache_dir=cache_dir,
                         demo_count=count or DataConfig.demo_count)
        images = load_images(cfg)
    elif path.is_dir():
        if image_size is None:
            image_size = folder_image_size(path)
        images = load_images(DataConfig(name="folder", root=str(path.resolve()), image_size=image_size, limit=count))
    elif path.is_file() and path.suffix == ".npz":
        images = load_npz_images(path)[:count]
    elif path.exists():
        raise DataError(f"{path} is neither a folder of images nor an npz file")
    else:
        raise DataError(f"{data} is not a data set ({', '.join(named)}), "
                        f"and no such file or folder exists")
    if images.shape[1] != images.shape[2]:
        raise DataError(f"the images are {images.shape[1]}x{images.shape[2]}: the spectrum model needs square images")
    if image_size is not None and images.shape[1] != image_size:
        raise DataError(f"the images are {images.shape[1]} px, not --image-size {image_size}")
    if len(images) < 2:
        raise DataError(f"{len(images)} image(s): a spectrum with a bootstrap interval needs at least 2")
    return images


def folder_image_size(root: Path) -> int:
    """The size of a folder's images when they are all the same square size (read from their headers); else a
    one-line error asking for --image-size."""
    from PIL import Image

    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    sizes = set()
    for path in files:
        with Image.open(path) as image:
            sizes.add(image.size)
        if len(sizes) > 1:
            break
    (width, height), *more = sorted(sizes)
    if more or width != height:
        shown = " and ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise DataError(f"{root} holds images of {shown}: give the training resolution with --image-size (they "
                        "are centre-cropped and resized to it)")
    return width


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
             seed: int = 0, estimator: str = DEFAULT_ESTIMATOR,
             band: str | tuple[float, float] = DEFAULT_BAND) -> SpectrumFit:
    """Fit D(f) = c1 / (c2 + |f|)^m to the images' mean spectrum with ``estimator`` over ``band`` (c2 fixed, or
    fitted when None), and every other estimator and named band beside it, with 95% bootstrap percentile
    intervals over images; then judge whether a single power law fits at all (``misfit``)."""
    if estimator not in ESTIMATORS:
        raise DataError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    spectra = image_spectra(images_u8)
    mean = spectra.mean(dim=0)
    n = int(mean.shape[0])
    try:
        limits = band_limits(band, n)
    except ValueError as err:
        raise DataError(str(err)) from None
    default = fit_spectrum(mean, c2=c2, band=limits, estimator=estimator)
    # every other estimator and band with c2 held at the default fit's, so that the bands compare slopes only
    named = {f"{e}_{b}": (e, b) for e in ESTIMATORS for b in BANDS}
    others = _fit_named(mean, default.c2, named)
    r = freq_radius(n)
    keep = r > 0 if c2 is not None else torch.ones_like(r, dtype=torch.bool)
    residual = float((torch.log(mean[keep]) - log_spectrum_model(r[keep], default.c1, default.c2, default.m))
                     .square().mean().sqrt())
    names = ("c1", "m") if c2 is not None else ("c1", "c2", "m")
    ci, named_ci, noise = {}, {}, 0.0
    if bootstrap > 0:
        generator = torch.Generator().manual_seed(seed)
        count = len(spectra)
        flat = spectra.reshape(count, -1)
        draws = {name: [] for name in names}
        named_draws = {name: [] for name in others}
        log_means = []
        for _ in range(bootstrap):
            weights = torch.bincount(torch.randint(0, count, (count,), generator=generator), minlength=count)
            resampled = (weights.to(torch.float64) @ flat / count).reshape(mean.shape)
            refit = fit_spectrum(resampled, c2=c2, band=limits, estimator=estimator)
            for name in names:
                draws[name].append(getattr(refit, name))
            for name, value in _fit_named(resampled, default.c2, {k: named[k] for k in others}).items():
                named_draws[name].append(value.m)
            log_means.append(torch.log(resampled[keep]))
        ci = {name: _interval(v) for name, v in draws.items()}
        named_ci = {name: _interval(v) for name, v in named_draws.items()}
        noise = float(torch.stack(log_means).var(dim=0).mean().sqrt())
    estimators = {name: {"estimator": named[name][0], "band": _band_json(band_limits(named[name][1], n)),
                         "m": fit.m, "c1": fit.c1, "ci": list(named_ci[name]) if name in named_ci else None}
                  for name, fit in others.items()}
    reason = misfit_reason(residual, noise, estimators, estimator)
    return SpectrumFit(c1=default.c1, c2=default.c2, m=default.m, residual=residual, images=len(images_u8),
                       image_size=n, fitted=names, ci=ci, bootstrap=bootstrap, estimator=estimator, band=limits,
                       estimators=estimators, noise=noise, misfit=bool(reason), misfit_reason=reason)


def _fit_named(power: torch.Tensor, c2: float, named: dict) -> dict:
    """name -> fit for each (estimator, band); a band with too few distinct radii at this size is left out."""
    out = {}
    for name, (estimator, band) in named.items():
        try:
            out[name] = fit_spectrum(power, c2=c2, band=band, estimator=estimator)
        except ValueError:
            continue
    return out


def _interval(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def misfit_reason(residual: float, noise: float, estimators: dict, estimator: str) -> str:
    """One plain line when a single power law fits the spectrum poorly, else "": the residual beyond what sampling
    noise explains exceeds RESIDUAL_LIMIT, or the slopes of two bands (the chosen estimator's) have disjoint 95%
    intervals and differ by more than SLOPE_TOLERANCE."""
    reasons = []
    excess = math.sqrt(max(0.0, residual * residual - noise * noise))
    if excess > RESIDUAL_LIMIT:
        reasons.append(f"RMS residual {residual:.2f} in ln P, {excess:.2f} beyond sampling noise")
    bands = [(b, estimators[f"{estimator}_{b}"]) for b in BAND_SLOPES if f"{estimator}_{b}" in estimators]
    disagree = [f"{a}/{b}" for i, (a, x) in enumerate(bands) for b, y in bands[i + 1:]
                if x["ci"] and y["ci"] and (x["ci"][1] < y["ci"][0] or y["ci"][1] < x["ci"][0])
                and abs(x["m"] - y["m"]) > SLOPE_TOLERANCE]
    if disagree:
        slopes = ", ".join(f"{b} m = {e['m']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}] ({_band_text(e['band'])})"
                           for b, e in bands)
        reasons.append(f"the bands' slopes disagree ({', '.join(disagree)}): {slopes}")
    if not reasons:
        return ""
    return "a single power law fits this data poorly: " + "; ".join(reasons)


def _band_text(band: list) -> str:
    lo, hi = band
    if lo == 0 and hi is None:
        return "every |f|"
    upper = "" if hi is None else f" <= {hi:.3g}"
    return (f"|f|{upper}" if lo == 0 else f"{lo:.3g} < |f|{upper}") + " cycles per image"


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
    ax.set_xlabel("|f| (cycles per image)")
    ax.set_ylabel("power")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def describe(fit: SpectrumFit) -> list[str]:
    """One readable line per constant, the residual, every estimator and band, and the misfit line if any."""
    lines = [f"fit: {fit.estimator} over {_band_text(_band_json(fit.band))}"]
    for name in ("c1", "c2", "m"):
        value = getattr(fit, name)
        if name in fit.ci:
            lo, hi = fit.ci[name]
            lines.append(f"{name:<3} = {value:.4g}   95% interval [{lo:.4g}, {hi:.4g}] ({fit.bootstrap} bootstrap "
                         f"resamples of {fit.images} images)")
        else:
            lines.append(f"{name:<3} = {value:.4g}   (fixed)")
    bins = "frequency bin" if "c2" in fit.fitted else "non-DC frequency bin"
    noise = f" (sampling noise alone: {fit.noise:.4f})" if fit.bootstrap else ""
    lines.append(f"residual: RMS of ln P - ln D = {fit.residual:.4f}{noise} over every {bins} of {fit.image_size}x"
                 f"{fit.image_size} images")
    for name, e in fit.estimators.items():
        ci = f" [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e.get("ci") else ""
        lines.append(f"  {name:<13} m = {e['m']:.3f}{ci}  ({_band_text(e['band'])}, c2 = {fit.c2:.4g})")
    if fit.misfit:
        lines.append(fit.misfit_reason)
    return lines


def check_finite(fit: SpectrumFit) -> None:
    if not all(math.isfinite(v) for v in (fit.c1, fit.c2, fit.m)):
        raise DataError("the fit did not converge to finite constants")
