"""Invariants of the SPD schedule (docs/method.md) and the values the reference code's tables give."""

import math

import mpmath
import pytest
import torch

from spd_tune.schedule import (
    MAX_BETA,
    DDPMSchedule,
    DiffusionSchedule,
    SPDSchedule,
    betas_from_alpha_bar,
    fourier_filter,
    geodesic_fraction,
    spd_alpha_bar,
    tau_grid,
)
from spd_tune.spectrum import freq_radius, log_spectrum_model

SINGULAR_M = [0.573532, 0.664911, 1.315049]  # D == 1 on the 32-px grid 
DC, F1, CORNER = (0, 0), (0, 1), (16, 16)


@pytest.fixture(scope="module")
def spd1000():
    return SPDSchedule(32, 1000)


# --- time grid ---------------------------------------------------------------------------------

def test_tau_grid_is_the_reference_grid():
    tau = tau_grid(1000)
    assert tau.dtype == torch.float64 and tau.shape == (1000,)
    assert tau[0].item() == pytest.approx(999 / 1000)
    assert tau[-1].item() == pytest.approx(1 / 1000)
    assert tau.diff().neg().mean().item() == pytest.approx(998 / (1000 * 999))


@pytest.mark.parametrize("steps", [2, 1, 0, -5, 2.5, True, "100"])
def test_too_few_or_malformed_steps_are_a_clear_error(steps):
    with pytest.raises(ValueError, match="steps"):
        SPDSchedule(32, steps)


# --- alpha_bar ---------------------------------------------------------------------------------

def test_reference_alpha_bar_values(spd1000):
    ab = spd1000.alpha_bar
    assert ab.dtype == torch.float64 and ab.shape == (1000, 32, 32)
    expected = {0: (0.990074, 0.99876, 0.999982), 500: (0.00674, 0.444, 0.947), 999: (4.664e-7, 7.93e-4, 5.777e-3)}
    for n, values in expected.items():
        for pos, value in zip((DC, F1, CORNER), values):
            assert ab[n][pos].item() == pytest.approx(value, rel=2e-3), (n, pos)


def test_alpha_bar_range_monotone_and_geodesic_identity(spd1000):
    ab, om = spd1000.alpha_bar, spd1000.one_minus_alpha_bar
    d = spd1000.log_d.exp()
    tau = tau_grid(1000).view(-1, 1, 1)
    assert bool(((ab > 0) & (ab < 1)).all())
    assert bool((ab[1:] < ab[:-1]).all())
    assert torch.allclose(om, 1 - ab, rtol=0, atol=1e-15)
    marginal = ab * d + om  # covariance of x_t along the Fisher geodesic: D^tau
    assert ((marginal - d**tau).abs() / d**tau).max().item() < 1e-12
    below, above = (d < 1).expand_as(ab), (d > 1).expand_as(ab)
    assert bool((ab[below] >= tau.expand_as(ab)[below]).all())
    assert bool((ab[above] <= tau.expand_as(ab)[above]).all())


def test_alpha_bar_converges_to_one_and_zero_as_T_grows():
    small, large = SPDSchedule(16, 100).alpha_bar, SPDSchedule(16, 10000).alpha_bar
    assert bool((large[0] > small[0]).all()) and bool((large[-1] < small[-1]).all())
    assert large[0].min().item() > 0.999 and large[-1].max().item() < 1e-3


def test_geodesic_fraction_at_the_removable_singularity():
    tau = tau_grid(50).view(-1, 1)
    log_d = torch.tensor([0.0, 1e-40, -1e-40, 1e-14, -1e-14])
    ab = geodesic_fraction(tau, log_d)
    assert bool(torch.isfinite(ab).all())
    assert torch.allclose(ab, tau.expand_as(ab), rtol=1e-12, atol=0)


def test_matches_naive_formula_away_from_the_singularity(spd1000):
    d = spd1000.log_d.exp()
    tau = tau_grid(1000).view(-1, 1, 1)
    naive = (1 - d**tau) / (1 - d)
    mask = ((d - 1).abs() > 1e-3).expand_as(naive)
    rel = ((spd1000.alpha_bar - naive).abs() / naive)[mask]
    assert rel.max().item() < 1e-10


@pytest.mark.parametrize("m", [m + delta for m in SINGULAR_M for delta in (0.0, 1e-7, -1e-7)])
def test_tables_are_finite_at_singular_m(m):
    sched = SPDSchedule(32, 1000, m=m)
    tab = sched.tables("cpu")
    for name, table in vars(tab).items():
        assert bool(torch.isfinite(table).all()), name
    assert bool((sched.betas > 0).all())
    cumprod = torch.cumprod(1 - sched.betas, 0)
    assert ((cumprod - sched.alpha_bar).abs() / sched.alpha_bar).max().item() < 1e-11


def _exact(tau, log_d):
    with mpmath.workdps(60):
        d = mpmath.exp(mpmath.mpf(log_d))
        t = mpmath.mpf(tau)
        ab = (1 - d**t) / (1 - d) if d != 1 else t
        return float(ab), float(1 - ab)


@pytest.mark.parametrize("m", [0.25, 1.315049, 2.0, 6.0])
@pytest.mark.parametrize("steps", [3, 10000])
def test_alpha_bar_is_exact_in_float64_across_the_search_range(m, steps):
    sched = SPDSchedule(32, steps, m=m)
    log_d = log_spectrum_model(freq_radius(32), m=m)
    tau = tau_grid(steps)
    for n in {0, 1, steps // 2, steps - 2, steps - 1}:
        for pos in (DC, F1, (0, 2), (1, 1), (5, 7), CORNER):
            ab, om = _exact(tau[n].item(), log_d[pos].item())
            assert sched.alpha_bar[n][pos].item() == pytest.approx(ab, rel=1e-12)
            assert sched.one_minus_alpha_bar[n][pos].item() == pytest.approx(om, rel=1e-12)


def test_matches_the_reference_float32_tables_at_m2():
    # the reference computes in float32 (P2); at m = 2 the two agree to 1e-3 relative
    d32 = (1.59 / (0.0086 + freq_radius(32, dtype=torch.float32)).abs() ** 2.0).float()
    t = torch.linspace(1, 999, 1000)
    tau = ((1000 - t) / 1000).view(-1, 1, 1)
    reference = (1 - d32**tau) / (1 - d32)
    ours = SPDSchedule(32, 1000).alpha_bar
    assert ((reference.double() - ours).abs() / ours).max().item() < 1e-3


# --- betas -------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, dc_beta", [(100, 0.09495), (1000, 0.00993), (4000, 0.00249)])
def test_betas(steps, dc_beta):
    sched = SPDSchedule(32, steps)
    b = sched.betas
    # the reference quotes 0.0952 at T=100; the exact value 1 - D(0)^(0.99-1)(1-D^-0.99)/(1-1/D) is 0.09495
    assert b[0][DC].item() == pytest.approx(dc_beta, rel=2e-3)
    assert bool(((b > 0) & (b < 1)).all())
    assert sched.clamped_betas == 0
    cumprod = torch.cumprod(1 - b, 0)
    assert ((cumprod - sched.alpha_bar).abs() / sched.alpha_bar).max().item() < 1e-12
    # alpha_bar ~ tau near the end, so the last betas are ~1/2 and ~1/3 at every frequency
    # quotes [0.49, 0.51] and [0.33, 0.34] for T = 100 too, but there tau*ln D(0) = 0.1 is not small and the
    # exact values spread to [0.483, 0.523] and [0.313, 0.366]; the quoted bands hold from T = 1000 on.
    last, second = (0.49, 0.51), (0.33, 0.34)
    if steps == 100:
        last, second = (0.48, 0.525), (0.31, 0.37)
    assert last[0] <= b[-1].min().item() and b[-1].max().item() <= last[1]
    assert second[0] <= b[-2].min().item() and b[-2].max().item() <= second[1]


def test_betas_keep_digits_where_they_are_tiny():
    sched = SPDSchedule(32, 1000, m=6.0)
    ab, om = sched.alpha_bar, sched.one_minus_alpha_bar
    naive = 1 - ab[1:] / ab[:-1]
    exact = sched.exact_betas[1:]
    # the early high-frequency betas reach 2e-10: 1 - ratio loses ~1e-7 relative there
    tiny = exact < 1e-6
    assert bool(tiny.any())
    reference = (om[1:] - om[:-1]) / ab[:-1]
    assert ((exact[tiny] - reference[tiny]).abs() / reference[tiny]).max().item() < 1e-12
    assert ((naive[tiny] - reference[tiny]).abs() / reference[tiny]).max().item() > 1e-8


def test_the_clamp_binds_only_at_large_m_and_tiny_T_and_is_documented_behaviour():
    sched = SPDSchedule(32, 3, m=6.0)
    assert sched.clamped_betas == 1
    assert sched.exact_betas[0][DC].item() > MAX_BETA
    assert sched.betas[0][DC].item() == MAX_BETA
    cumprod = torch.cumprod(1 - sched.betas, 0)
    binds = (sched.exact_betas > MAX_BETA).cumsum(0) > 0
    rel = (cumprod - sched.alpha_bar).abs() / sched.alpha_bar
    assert rel[~binds].max().item() < 1e-12  # cumprod(1 - beta) = alpha_bar wherever the clamp does not bind
    assert rel[binds].min().item() > 1.0  # and the clamped DC entries differ by design
    # the mean of the last reverse step uses the exact alpha, so it is still the x0-prediction
    tab = sched.tables("cpu", torch.float64)
    x0 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.zeros(2, dtype=torch.long)
    from spd_tune.sampling import ancestral_step

    x_t = sched.q_sample(x0, t, eps)
    assert torch.allclose(ancestral_step(x_t, eps, tab, 0, None), x0, atol=1e-9)


def test_betas_from_alpha_bar_matches_definition():
    ab = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64).view(3, 1, 1)
    b = betas_from_alpha_bar(ab).flatten()
    assert torch.allclose(b, torch.tensor([0.1, 1 - 0.5 / 0.9, 1 - 0.1 / 0.5], dtype=torch.float64))


# --- DDPM --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_schedule_shares_the_interface(kind):
    sched = DDPMSchedule(1000, kind)
    assert sched.alpha_bar.shape == (1000, 1, 1) and not sched.frequency_dependent
    assert bool((sched.betas > 0).all()) and sched.betas.max().item() <= MAX_BETA
    x0 = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    ab = sched.alpha_bar[t].view(-1, 1, 1, 1)
    assert torch.allclose(sched.q_sample(x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-12)


def test_ddpm_linear_betas_are_iddpm():
    b = DDPMSchedule(1000, "linear").betas.flatten()
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="steps >= 21"):
        DDPMSchedule(10, "linear")
    with pytest.raises(ValueError, match="kind"):
        DDPMSchedule(100, "quadratic")


# --- Fourier filter ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gain():
    return SPDSchedule(8, 100).alpha_bar[40].sqrt()


def test_fourier_filter_linear_identity_shift_equivariant_self_adjoint(gain):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert torch.allclose(fourier_filter(2 * a - b, gain), 2 * fourier_filter(a, gain) - fourier_filter(b, gain))
    assert torch.allclose(fourier_filter(a, torch.ones(8, 8, dtype=torch.float64)), a, atol=1e-14)
    shifted = torch.roll(a, shifts=(3, -2), dims=(-2, -1))
    assert torch.allclose(fourier_filter(shifted, gain), torch.roll(fourier_filter(a, gain), (3, -2), (-2, -1)))
    assert (fourier_filter(a, gain) * b).sum().item() == pytest.approx((a * fourier_filter(b, gain)).sum().item())


def test_real_fft_path_equals_the_reference_complex_path(gain):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    full = torch.fft.ifft2(gain * torch.fft.fft2(x, norm="ortho"), norm="ortho")
    assert full.imag.abs().max().item() / full.real.abs().max().item() < 1e-6
    assert torch.allclose(fourier_filter(x, gain), full.real, atol=1e-14)


# --- q_sample, x0-prediction, loss -------------------------------------------------------------

def test_q_sample_is_real_deterministic_and_keeps_shape(spd1000):
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    out = spd1000.q_sample(x0, t, eps)
    assert out.shape == x0.shape and out.dtype == torch.float32 and not out.is_complex()
    assert torch.equal(out, spd1000.q_sample(x0, t, eps))
    assert not torch.equal(out, spd1000.q_sample(x0, t, torch.randn_like(x0)))  # the noise is used


def test_q_sample_runs_in_float32_under_bf16_autocast(spd1000):
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([3, 700])
    plain = spd1000.q_sample(x0, t, eps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = spd1000.q_sample(x0, t, eps)
        from_bf16 = spd1000.q_sample(x0.bfloat16(), t, eps.bfloat16())
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)
    assert from_bf16.dtype == torch.float32


def test_frequency_independent_spd_equals_ddpm():
    ddpm = DDPMSchedule(200, "cosine")
    flat = DiffusionSchedule(ddpm.alpha_bar.expand(-1, 8, 8).clone())
    assert flat.frequency_dependent
    const_d = spd_alpha_bar(torch.full((8, 8), math.log(0.3), dtype=torch.float64), 200)[0]
    spd_const = DiffusionSchedule(const_d)
    ddpm_const = DiffusionSchedule(const_d[:, :1, :1].clone())
    x0 = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 5, 50, 120, 199])
    assert torch.allclose(flat.q_sample(x0, t, eps), ddpm.q_sample(x0, t, eps), atol=1e-12)
    assert torch.allclose(spd_const.q_sample(x0, t, eps), ddpm_const.q_sample(x0, t, eps), atol=1e-12)


def test_noise_covariance_is_the_circulant_operator():
    sched = SPDSchedule(8, 100)
    t = 60
    basis = torch.eye(64, dtype=torch.float64).view(64, 1, 8, 8)
    idx = torch.full((64,), t)
    b = sched.q_sample(torch.zeros_like(basis), idx, basis).view(64, 64).T  # columns: B e_i
    target = fourier_filter(basis, sched.one_minus_alpha_bar[t]).view(64, 64).T  # F^H diag(1 - ab) F
    assert torch.allclose(b @ b.T, target, atol=1e-12)
    assert torch.allclose(torch.diag(b @ b.T), sched.one_minus_alpha_bar[t].mean().expand(64), atol=1e-12)


def test_predict_x0_inverts_q_sample_at_every_step():
    sched = SPDSchedule(32, 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1000, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.arange(1000)
    assert (sched.predict_x0(sched.q_sample(x0, t, eps), t, eps) - x0).abs().max().item() < 1e-10
    x32, e32 = x0[::50].float(), eps[::50].float()
    err32 = (sched.predict_x0(sched.q_sample(x32, t[::50], e32), t[::50], e32) - x32).abs().max().item()
    assert err32 < 5e-3  # DC errors are amplified by 1/sqrt(ab) ~ 1.5e3 at the last step


def test_parseval_pixel_mse_equals_frequency_mse():
    eps, eps_hat = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    pixel = (eps - eps_hat).square().mean()
    freq = (torch.fft.fft2(eps, norm="ortho") - torch.fft.fft2(eps_hat, norm="ortho")).abs().square().mean()
    assert pixel.item() == pytest.approx(freq.item(), rel=1e-12)


def test_model_time_is_the_reference_mapping(spd1000):
    t = torch.tensor([0, 1, 999])
    times = spd1000.model_time(t)
    assert times.tolist() == pytest.approx([0.0, 1.0, 999.0])
    assert SPDSchedule(8, 4000).model_time(torch.tensor([3999])).item() < 1000
    assert SPDSchedule(8, 250).model_time(torch.tensor([100])).item() == pytest.approx(400.0)


def test_tables_are_built_once_and_live_on_the_device(spd1000):
    first = spd1000.tables("cpu")
    assert spd1000.tables(torch.device("cpu")) is first
    assert first.sqrt_ab.shape == (1000, 32, 17)  # half spectrum for rfft2
    assert first.sqrt_ab.dtype == torch.float32
    assert spd1000.tables("cpu", torch.float64) is not first


def test_loss_is_seedable_and_finite():
    from spd_tune.unet import UNet

    sched = SPDSchedule(16, 100)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = UNet.from_preset("micro", dropout=0.1)
        g = torch.Generator().manual_seed(7)
        x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
        t = sched.sample_t(4, g)
        losses.append(sched.loss(model, x0, t, torch.randn(x0.shape, generator=g)).item())
    assert losses[0] == losses[1] and math.isfinite(losses[0])
