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
    # the command lives in data/: ``import spd_tune.spectrum`` stays the light public path to core.spectrum
    from .data.spectrum_command import main as command

    return command(argv)


if __name__ == "__main__":
    raise SystemExit(main())
