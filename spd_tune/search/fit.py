"""Search around the data's own spectrum: parameters written ``{path: process.m, type: float, around: fit,
width: 0.75}`` get the range fit ± width (fit·e^±width when log), where fit is D(f) = c1 / (c2 + |f|)^m fitted to
the training data at the training resolution with the config's c2 (data/spectrum.py), by the parameter's
``estimator`` over its ``band`` (default: whittle over the low third of the frequencies). The range of m is then
widened to cover every other estimator's and band's m and the paper's m = 2, unless ``widen: false``: on real
photographs a single power law is a model of a spectrum that is not one, and the search should see the
alternatives. The first trial uses the fitted values. The fit runs on the driver before Ray starts; --dry-run
prints it (with a line when a single power law fits the data poorly) and the parent MLflow run keeps it
(``spectrum_fit.json``, ``spectrum.png``, tags ``spd_tune.spectrum_*``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..data import DataConfig, load_images
from ..data.spectrum import DEFAULT_BAND, DEFAULT_ESTIMATOR, PAPER, SpectrumFit, fit_data, plot_fit
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
    choices = {(p.estimator or DEFAULT_ESTIMATOR, _band_key(p.band)) for p in wanted.values()}
    if len(choices) > 1:
        raise ConfigError("the parameters centred on the fit name different estimators or bands "
                          f"({', '.join(sorted(f'{e} over {b}' for e, b in choices))}): there is one fit per search")
    ((estimator, band_key),) = choices
    band = band_key if isinstance(band_key, str) else tuple(band_key)
    images = _images(train.data)
    fit = fit_data(images, c2=train.process.c2, bootstrap=FIT_BOOTSTRAP, estimator=estimator, band=band)
    if not all(math.isfinite(v) for v in (fit.c1, fit.m)):
        raise ConfigError(f"the spectrum fit of the training data did not converge (c1={fit.c1}, m={fit.m})")
    resolved, ranges, values, widened = dict(params), {}, {}, {}
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
        if p.path == "process.m" and p.widen:
            others = [e["m"] for e in fit.estimators.values() if math.isfinite(e["m"])] + [PAPER["m"]]
            wide_low, wide_high = min(low, *others), max(high, *others)
            if (wide_low, wide_high) != (low, high):
                widened[name] = {"from": [float(low), float(high)], "to": [float(wide_low), float(wide_high)]}
            low, high = wide_low, wide_high
        resolved[name] = dataclasses.replace(p, low=float(low), high=float(high))
        ranges[name] = [float(low), float(high)]
        values[p.path] = float(centre)
    process = dataclasses.replace(train.process, **{FIT_PATHS[path]: value for path, value in values.items()})
    record = {"fit": fit.as_dict(), "ranges": ranges, "widened": widened, "first_trial": values,
              "data": train.data.name, "images": fit.images}
    return dataclasses.replace(train, process=process), resolved, record


def _band_key(band) -> str | tuple:
    if band is None:
        return DEFAULT_BAND
    return band if isinstance(band, str) else tuple(float(v) for v in band)


def spectrum_tags(record: dict) -> dict[str, str]:
    """The parent MLflow run's tags for the fit: the estimator, band, m and the misfit line."""
    fit = record["fit"]
    return {"spd_tune.spectrum_estimator": str(fit.get("estimator", "ls")),
            "spd_tune.spectrum_band": json.dumps(fit.get("band")), "spd_tune.spectrum_m": f"{fit['m']:.4g}",
            "spd_tune.spectrum_misfit": "true" if fit.get("misfit") else "false",
            "spd_tune.spectrum_misfit_reason": fit.get("misfit_reason", "")[:5000]}


def describe_fit(record: dict) -> list[str]:
    fit = record["fit"]
    ci = fit["ci"]
    parts = [f"{k} = {fit[k]:.4g}" + (f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else " (fixed)")
             for k in ("c1", "c2", "m")]
    how = SpectrumFit.from_dict(fit)
    lines = [f"  spectrum fit of the training data ({record['images']} images, {how.estimator} over "
             f"{_band_words(how.band)}, 95% bootstrap intervals): " + ", ".join(parts)]
    for name, (lo, hi) in record["ranges"].items():
        wide = record.get("widened", {}).get(name)
        how_wide = (f" (fit ± width [{wide['from'][0]:.4g}, {wide['from'][1]:.4g}], widened to every estimator's "
                    "m and the paper's 2.0)") if wide else ""
        lines.append(f"    {name}: range [{lo:.4g}, {hi:.4g}] centred on the fit{how_wide}")
    if fit.get("misfit"):
        lines.append(f"  {fit['misfit_reason']}")
    return lines


def _band_words(band: tuple[float, float]) -> str:
    lo, hi = band
    if lo == 0 and not math.isfinite(hi):
        return "every |f|"
    return (f"|f| <= {hi:.3g}" if lo == 0 else f"{lo:.3g} < |f| <= {hi:.3g}") + " cycles per image"


def write_fit_plot(train: TrainConfig, record: dict, path: Path) -> Path:
    """The log-log plot of the fit (the images are read again: the fit record keeps numbers only)."""
    fit = SpectrumFit.from_dict(record["fit"])
    return plot_fit(_images(train.data), fit, path, f"training data ({record['data']}, {fit.images} images)")
