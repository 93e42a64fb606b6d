"""``python -m spd_tune.spectrum``: measure a data set's power spectrum and fit the SPD model to it (the module's
docstring in spd_tune/spectrum.py says how it is called)."""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import Parser, run_main
from ..core.spectrum import ESTIMATORS
from ..errors import ConfigError
from .spectrum import (
    DEFAULT_BAND,
    DEFAULT_ESTIMATOR,
    PAPER,
    SpectrumFit,
    check_finite,
    describe,
    fit_data,
    plot_fit,
    resolve_images,
)


def parser() -> Parser:
    p = Parser(prog="python -m spd_tune.spectrum", description="Measure a data set's power spectrum and fit "
               "D(f) = c1 / (c2 + |f|)^m to it, with bootstrap confidence intervals.")
    p.add_argument("data", help="cifar10, imagenet64, demo, a folder of images, or an npz file")
    p.add_argument("--image-size", type=int, default=None, help="training resolution (default for a folder: the "
                   "images' own size when they are all the same square size)")
    p.add_argument("--count", type=int, default=None, help="use the first N images (default: all)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--c2", type=float, default=PAPER["c2"], help="fixed c2 (default: the paper's 0.0086)")
    group.add_argument("--fit-c2", action="store_true", help="fit c2 as well (through the DC bin)")
    p.add_argument("--estimator", choices=ESTIMATORS, default=DEFAULT_ESTIMATOR,
                   help="whittle: the Gaussian likelihood of the stationary model; ls: least squares of ln P")
    p.add_argument("--band", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="fit the bins with LO < |f| <= HI cycles per image (default: |f| <= n/6, the low third)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--plot", default=None, help="write the log-log radial spectrum here (PNG)")
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else, on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: run(args))


def check_args(args: argparse.Namespace) -> None:
    """One line for each bad flag, before any image is read."""
    if args.count is not None and args.count < 2:
        raise ConfigError(f"--count={args.count} must be at least 2")
    if args.image_size is not None and args.image_size < 4:
        raise ConfigError(f"--image-size={args.image_size} must be at least 4")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap={args.bootstrap} must be >= 0")
    if not args.fit_c2 and not args.c2 > 0:
        raise ConfigError(f"--c2={args.c2} must be > 0")
    if args.band is not None and not 0 <= args.band[0] < args.band[1]:
        raise ConfigError(f"--band {args.band[0]:g} {args.band[1]:g} must satisfy 0 <= LO < HI (cycles per image)")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    images = resolve_images(args.data, image_size=args.image_size, count=args.count)
    band = DEFAULT_BAND if args.band is None else tuple(args.band)
    fit = fit_data(images, c2=None if args.fit_c2 else args.c2, bootstrap=args.bootstrap, estimator=args.estimator,
                   band=band)
    check_finite(fit)
    if args.plot:
        plot_fit(images, fit, args.plot, f"power spectrum of {args.data} ({fit.images} images, {fit.image_size} px)")
    show(args, fit)
    return 0


def show(args: argparse.Namespace, fit: SpectrumFit) -> None:
    """One JSON object on stdout (the misfit line on stderr), or the readable lines."""
    if args.json:
        print(json.dumps({**fit.as_dict(), "data": args.data, "plot": args.plot}))
        if fit.misfit:
            print(fit.misfit_reason, file=sys.stderr)
    else:
        print(f"{args.data}: {fit.images} images of {fit.image_size}x{fit.image_size}, scaled to [-1, 1]")
        for line in describe(fit):
            print(f"  {line}")
        if args.plot:
            print(f"  plot: {args.plot}")
    sys.stdout.flush()
