"""Public import path kept for user code and README examples: the code lives in ``spd_tune.core.spectrum``.

Run as a command, it measures a data set's power spectrum and fits the SPD model to it:

    python -m spd_tune.spectrum DATA [--image-size N] [--count N] [--c2 VALUE | --fit-c2]
                                     [--estimator whittle|ls] [--band LO HI] [--plot P.png] [--json]

DATA is cifar10, imagenet64, demo, a folder of images or an npz file (``images`` or ``arr_0``, uint8
[N, H, W, 3]), read by the training loaders and scaled as training scales it. The default fit is the Whittle
likelihood over the low third of the frequencies (|f| <= n/6 cycles per image); every other estimator and band
is reported beside it, and a line says when a single power law fits the data poorly (docs/method.md).
"""

from .core.spectrum import (
    BANDS,
    ESTIMATORS,
    SpectrumParams,
    band_limits,
    check_spectrum_params,
    fit_spectrum,
    freq_radius,
    gaussian_field,
    log_spectrum_model,
    power_spectrum,
    spectrum_model,
)

__all__ = [
    "BANDS", "ESTIMATORS", "SpectrumParams", "band_limits", "check_spectrum_params", "fit_spectrum", "freq_radius",
    "gaussian_field", "log_spectrum_model", "main", "power_spectrum", "spectrum_model",
]


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    # the command's imports stay here: ``import spd_tune.spectrum`` is the light public path to core.spectrum
    from .cli import Parser, run_main
    from .core.spectrum import ESTIMATORS
    from .data.spectrum import (
        DEFAULT_BAND,
        DEFAULT_ESTIMATOR,
        PAPER,
        check_finite,
        describe,
        fit_data,
        plot_fit,
        resolve_images,
    )

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
    args = p.parse_args(argv)

    def run() -> int:
        from .errors import ConfigError  # as above: kept off the public import path

        if args.count is not None and args.count < 2:
            raise ConfigError(f"--count={args.count} must be at least 2")
        if args.image_size is not None and args.image_size < 4:
            raise ConfigError(f"--image-size={args.image_size} must be at least 4")
        if args.bootstrap < 0:
            raise ConfigError(f"--bootstrap={args.bootstrap} must be >= 0")
        if not args.fit_c2 and not args.c2 > 0:
            raise ConfigError(f"--c2={args.c2} must be > 0")
        if args.band is not None and not 0 <= args.band[0] < args.band[1]:
            raise ConfigError(f"--band {args.band[0]:g} {args.band[1]:g} must satisfy 0 <= LO < HI (cycles per "
                              "image)")
        images = resolve_images(args.data, image_size=args.image_size, count=args.count)
        band = DEFAULT_BAND if args.band is None else tuple(args.band)
        fit = fit_data(images, c2=None if args.fit_c2 else args.c2, bootstrap=args.bootstrap,
                       estimator=args.estimator, band=band)
        check_finite(fit)
        if args.plot:
            plot_fit(images, fit, args.plot, f"power spectrum of {args.data} ({fit.images} images, "
                     f"{fit.image_size} px)")
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
        return 0

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
