"""Search around the data's own spectrum: parameters written ``{path: process.m, type: float, around: fit,
width: 0.75}`` get the range fit ± width (fit·e^±width when log), where fit is D(f) = c1 / (c2 + |f|)^m fitted to
the training data at the training resolution with the config's c2 (data/spectrum.py). The first trial then uses
the fitted values. The fit runs on the driver before Ray starts; --dry-run prints it and the parent MLflow run
keeps it (``spectrum/fit.json``, ``spectrum/spectrum.png``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..data.loaders import DataConfig, load_images
from ..data.spectrum import fit_data, plot_fit
from ..errors import ConfigError
from ..train.config import TrainConfig

FIT_PATHS = {"process.m": "m", "process.c1": "c1"}
FIT_IMAGES = 10_000  # the first N training images: the mean spectrum is settled long before
FIT_BOOTSTRAP = 100


def _images(data: DataConfig):
    limit = min(data.limit or FIT_IMAGES, FIT_IMAGES)
    return load_images(dataclasses.replace(data, limit=limit))


def centre_on_fit(train: TrainConfig, params: dict) -> tuple[TrainConfig, dict, dict | None]:
    """(train config with the fitted values, params with resolved ranges, the fit record) for the params with
    ``around: fit``; unchanged when there are none."""
    wanted = {name: p for name, p in params.items() if p.around == "fit"}
    if not wanted:
        return train, params, None
    if train.process.kind != "spd":
        raise ConfigError("around: fit centres the SPD spectrum's constants: it needs train.process.kind: spd")
    images = _images(train.data)
    fit = fit_data(images, c2=train.process.c2, bootstrap=FIT_BOOTSTRAP)
    if not all(math.isfinite(v) for v in (fit.c1, fit.m)):
        raise ConfigError(f"the spectrum fit of the training data did not converge (c1={fit.c1}, m={fit.m})")
    resolved, ranges, values = dict(params), {}, {}
    for name, p in wanted.items():
        centre = getattr(fit, FIT_PATHS[p.path])
        low, high = (centre * math.exp(-p.width), centre * math.exp(p.width)) if p.log else (
            centre - p.width, centre + p.width)
        if p.path == "process.m" and low <= 0:
            raise ConfigError(f"search.params.{name}: the fit gives m = {centre:.4g}, so width {p.width} reaches "
                              f"m = {low:.4g}; m must stay > 0 (narrow the width or set log: true)")
        if p.path == "process.c1" and low <= 0:
            raise ConfigError(f"search.params.{name}: c1 = {centre:.4g} ± {p.width} reaches {low:.4g}; c1 must stay "
                              "> 0 (use log: true, width in ln units)")
        resolved[name] = dataclasses.replace(p, low=float(low), high=float(high))
        ranges[name] = [float(low), float(high)]
        values[p.path] = float(centre)
    process = dataclasses.replace(train.process, **{FIT_PATHS[path]: value for path, value in values.items()})
    record = {"fit": fit.as_dict(), "ranges": ranges, "first_trial": values, "data": train.data.name,
              "images": fit.images}
    return dataclasses.replace(train, process=process), resolved, record


def describe_fit(record: dict) -> list[str]:
    fit = record["fit"]
    ci = fit["ci"]
    parts = [f"{k} = {fit[k]:.4g}" + (f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else " (fixed)")
             for k in ("c1", "c2", "m")]
    lines = [f"  spectrum fit of the training data ({record['images']} images, 95% bootstrap intervals): "
             + ", ".join(parts)]
    lines += [f"    {name}: range [{lo:.4g}, {hi:.4g}] centred on the fit"
              for name, (lo, hi) in record["ranges"].items()]
    return lines


def write_fit_plot(train: TrainConfig, record: dict, path: Path) -> Path:
    """The log-log plot of the fit (the images are read again: the fit record keeps numbers only)."""
    from ..data.spectrum import SpectrumFit

    f = record["fit"]
    fit = SpectrumFit(c1=f["c1"], c2=f["c2"], m=f["m"], residual=f["residual"], images=f["images"],
                      image_size=f["image_size"], fitted=tuple(f["fitted"]),
                      ci={k: tuple(v) for k, v in f["ci"].items()}, bootstrap=f["bootstrap"])
    return plot_fit(_images(train.data), fit, path, f"training data ({record['data']}, {fit.images} images)")
