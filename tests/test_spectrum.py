import math

import pytest
import torch

from spd_tune.spectrum import (
    SpectrumParams,
    fit_spectrum,
    freq_radius,
    gaussian_field,
    log_spectrum_model,
    power_spectrum,
    spectrum_model,
)


@pytest.mark.parametrize("n", [8, 9, 32])
def test_radius_grid(n):
    r = freq_radius(n)
    assert r.dtype == torch.float64 and r.shape == (n, n)
    assert r[0, 0] == 0
    idx = (-torch.arange(n)) % n
    assert torch.equal(r, r[idx][:, idx])  # symmetric under k -> -k mod n, Nyquist included
    expected_max = math.sqrt(2) * (n // 2)
    assert r.max().item() == pytest.approx(expected_max)
    assert r[0, 1] == 1.0  # integer cycles per image


def test_radius_max_is_n_over_sqrt2_for_even_n():
    assert freq_radius(32).max().item() == pytest.approx(32 / math.sqrt(2))


def test_spectrum_model_properties():
    r = freq_radius(32)
    d = spectrum_model(r)
    assert d.dtype == torch.float64 and bool((d > 0).all())
    order = torch.argsort(r.flatten())
    assert bool((d.flatten()[order].diff() <= 0).all())
    assert d[0, 0].item() == pytest.approx(1.59 / 0.0086**2, rel=1e-12)
    crossing = 1.59 ** (1 / 2) - 0.0086
    assert torch.equal(d > 1, r < crossing)
    assert int((d > 1).sum()) == 5  # DC and the four |f| = 1 bins
    assert d[0, 1].item() == pytest.approx(1.563, abs=1e-3)


def test_log_model_has_no_overflow_at_large_m():
    log_d = log_spectrum_model(freq_radius(64), m=6.0, c2=1e-3)
    assert bool(torch.isfinite(log_d).all())
    assert log_d[0, 0].item() == pytest.approx(math.log(1.59) - 6 * math.log(1e-3))


@pytest.mark.parametrize("bad", [dict(m=0.0), dict(m=-1.0), dict(c2=0.0), dict(c1=-1.0), dict(m=float("nan"))])
def test_bad_spectrum_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SpectrumParams(**bad)


def test_power_spectrum_of_white_noise_is_flat():
    x = torch.randn(512, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p = power_spectrum(x)
    assert p.shape == (16, 16)
    assert p.mean().item() == pytest.approx(1.0, abs=0.01)
    assert (p - 1).abs().max().item() < 0.15


def _field_power(c1, c2, m, count=2048, n=32, seed=0):
    log_d = log_spectrum_model(freq_radius(n), c1, c2, m)
    x = gaussian_field(count, 3, n, log_d, torch.Generator().manual_seed(seed))
    return power_spectrum(x), log_d.exp()


def test_gaussian_field_has_the_requested_spectrum():
    power, d = _field_power(1.59, 0.5, 2.0)
    ratio = power / d
    assert ratio.median().item() == pytest.approx(1.0, abs=0.03)


def test_fit_with_fixed_c2_recovers_c1_and_m():
    power, _ = _field_power(1.59, 0.0086, 2.0)
    fit = fit_spectrum(power, c2=0.0086)
    assert fit.c2 == 0.0086
    assert fit.m == pytest.approx(2.0, abs=0.02)
    assert fit.c1 == pytest.approx(1.59, rel=0.03)


@pytest.mark.parametrize("truth", [(1.59, 0.5, 2.0), (0.8, 1.0, 2.5), (3.0, 0.3, 1.5)])
def test_fit_recovers_all_three_when_c2_is_identifiable(truth):
    c1, c2, m = truth
    fit = fit_spectrum(_field_power(c1, c2, m)[0])
    assert fit.m == pytest.approx(m, abs=0.03)
    assert fit.c1 == pytest.approx(c1, rel=0.05)
    assert fit.c2 == pytest.approx(c2, rel=0.08)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        fit_spectrum(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="square"):
        fit_spectrum(torch.ones(8, 4))
