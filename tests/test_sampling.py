"""Samplers: posterior and DDIM consistency, the Gaussian oracle, respacing and per-image seeds."""

import pytest
import torch

from spd_tune.sampling import SamplerConfig, ancestral_step, ddim_step, sample
from spd_tune.schedule import DDPMSchedule, DiffusionSchedule, SPDSchedule, fourier_filter, spd_alpha_bar
from spd_tune.spectrum import power_spectrum

F64 = torch.float64


def gaussian_oracle(sched: SPDSchedule):
    """The exact eps-predictor for data ~ N(0, F^H D F): eps* = F^-1[sqrt(1 - ab) / D^tau F x_t]."""
    d = sched.log_d.exp()
    gains = sched.one_minus_alpha_bar.sqrt() / (sched.alpha_bar * d + sched.one_minus_alpha_bar)

    def denoise(x, model_time):
        n = int(round(model_time[0].item() * sched.train_steps / 1000))
        return fourier_filter(x, gains[n].to(x.dtype))

    return denoise


def _q_pair(sched, n, dtype=F64):
    g = torch.Generator().manual_seed(n)
    x0 = torch.rand(3, 3, 8, 8, generator=g, dtype=dtype) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=dtype)
    return x0, eps, sched.q_sample(x0, torch.full((3,), n), eps)


@pytest.mark.parametrize("n", [1, 2, 50, 99])
def test_ancestral_mean_is_the_fourier_posterior_mean(n):
    sched = SPDSchedule(8, 100)
    x0, eps, x_t = _q_pair(sched, n)
    mean = ancestral_step(x_t, eps, sched.tables("cpu", F64), n, None)
    om = sched.one_minus_alpha_bar[n]
    ab_prev, beta = sched.alpha_bar[n - 1], sched.exact_betas[n]
    coef_x0 = ab_prev.sqrt() * beta / om
    coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / om
    posterior = fourier_filter(x0, coef_x0) + fourier_filter(x_t, coef_xt)
    assert (mean - posterior).abs().max().item() < 1e-10


def test_ancestral_mean_equals_guided_diffusion_for_ddpm():
    sched = DDPMSchedule(100, "linear")
    n = 40
    x0, eps, x_t = _q_pair(sched, n)
    beta, ab = sched.betas[n].item(), sched.alpha_bar[n].item()
    expected = (x_t - beta / (1 - ab) ** 0.5 * eps) / (1 - beta) ** 0.5
    assert torch.allclose(ancestral_step(x_t, eps, sched.tables("cpu", F64), n, None), expected, atol=1e-12)


@pytest.mark.parametrize("n", [1, 30, 99])
def test_ddim_maps_q_sample_to_the_previous_step(n):
    sched = SPDSchedule(8, 100)
    x0, eps, x_t = _q_pair(sched, n)
    prev = ddim_step(x_t, eps, sched.tables("cpu", F64), n, None, None)
    expected = sched.q_sample(x0, torch.full((3,), n - 1), eps)
    assert (prev - expected).abs().max().item() < 1e-10


def test_last_steps_return_the_x0_prediction():
    sched = SPDSchedule(8, 100)
    x0, eps, x_t = _q_pair(sched, 0)
    tab = sched.tables("cpu", F64)
    assert (ancestral_step(x_t, eps, tab, 0, None) - x0).abs().max().item() < 1e-12
    assert (ddim_step(x_t, eps, tab, 0, None, None) - x0).abs().max().item() < 1e-12


@pytest.mark.parametrize("kind, median_tol, mean_tol", [("ancestral", 0.03, 0.02), ("ddim", 0.03, 0.02)])
def test_gaussian_oracle_reproduces_the_target_spectrum(kind, median_tol, mean_tol):
    sched = SPDSchedule(8, 1000)
    x = sample(gaussian_oracle(sched), sched, list(range(512)), (3, 8, 8), config=SamplerConfig(kind), dtype=F64)
    ratio = power_spectrum(x) / sched.log_d.exp()
    assert abs(ratio.median().item() - 1) < median_tol
    assert abs(ratio.mean().item() - 1) < mean_tol


@pytest.mark.parametrize(
    "m, steps", [(m + d, 1000) for m in (0.573532, 0.664911, 1.315049) for d in (0.0, 1e-7, -1e-7)] + [(4.0, 4000)]
)
def test_full_sampling_run_is_finite(m, steps):
    sched = SPDSchedule(32, steps, m=m)
    x = sample(gaussian_oracle(sched), sched, [0, 1], (3, 32, 32))
    assert bool(torch.isfinite(x).all())


def test_respacing_with_K_equal_T_is_the_unrespaced_loop():
    sched = SPDSchedule(8, 60)
    respaced = sched.respace(60)
    assert respaced is not sched and torch.equal(respaced.timesteps, torch.arange(60))
    assert torch.allclose(respaced.betas, sched.betas, rtol=1e-13, atol=0)
    oracle = gaussian_oracle(sched)
    for cfg in (SamplerConfig("ancestral"), SamplerConfig("ddim", eta=0.5)):
        full = sample(oracle, sched, [3, 4], (3, 8, 8), config=cfg, dtype=F64)
        same = sample(oracle, sched, [3, 4], (3, 8, 8), config=SamplerConfig(cfg.kind, steps=60, eta=cfg.eta), dtype=F64)
        assert torch.allclose(full, same, atol=1e-12)


def test_respacing_keeps_evenly_spaced_steps_and_the_original_model_time():
    sched = SPDSchedule(8, 1000)
    respaced = sched.respace(10)
    assert respaced.steps == 10 and respaced.train_steps == 1000
    assert respaced.timesteps[0] == 0 and respaced.timesteps[-1] == 999
    assert torch.equal(respaced.alpha_bar, sched.alpha_bar[respaced.timesteps])
    assert respaced.tables("cpu").model_time.tolist() == pytest.approx(respaced.timesteps.float().tolist())
    cumprod = torch.cumprod(1 - respaced.betas, 0)
    assert torch.allclose(cumprod, respaced.alpha_bar, rtol=1e-12)
    assert sched.respace(1).timesteps.tolist() == [999]
    with pytest.raises(ValueError, match="K=1001"):
        sched.respace(1001)


def test_respaced_oracle_sampling_is_finite_and_close():
    sched = SPDSchedule(8, 1000)
    x = sample(gaussian_oracle(sched), sched, list(range(256)), (3, 8, 8), config=SamplerConfig("ddim", steps=50))
    ratio = power_spectrum(x) / sched.log_d.exp()
    assert bool(torch.isfinite(x).all()) and abs(ratio.median().item() - 1) < 0.1


@pytest.mark.parametrize("cfg", [SamplerConfig("ancestral", steps=20), SamplerConfig("ddim", steps=20, eta=1.0),
                                 SamplerConfig("ddim", steps=20)])
def test_samples_do_not_depend_on_batch_composition(cfg):
    sched = SPDSchedule(8, 200)
    oracle = gaussian_oracle(sched)
    together = sample(oracle, sched, list(range(6)), (3, 8, 8), config=cfg)
    split = torch.cat([sample(oracle, sched, [0, 1, 2, 3], (3, 8, 8), config=cfg),
                       sample(oracle, sched, [4, 5], (3, 8, 8), config=cfg)])
    single = sample(oracle, sched, [5], (3, 8, 8), config=cfg)
    assert torch.allclose(together, split, atol=1e-6) and torch.allclose(together[5:], single, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


def test_eta_zero_ddim_is_deterministic_given_x_T_and_stochastic_samplers_differ():
    sched = SPDSchedule(8, 100)
    oracle = gaussian_oracle(sched)
    ddim = sample(oracle, sched, [0], (3, 8, 8), config=SamplerConfig("ddim"))
    noisy = sample(oracle, sched, [0], (3, 8, 8), config=SamplerConfig("ddim", eta=1.0))
    ancestral = sample(oracle, sched, [0], (3, 8, 8))
    assert not torch.allclose(ddim, noisy) and not torch.allclose(ddim, ancestral)


def test_frequency_independent_spd_samples_equal_ddpm_samples():
    const_ab = spd_alpha_bar(torch.full((8, 8), -1.2, dtype=F64), 100)
    spd_const = DiffusionSchedule(*const_ab)
    ddpm_const = DiffusionSchedule(const_ab[0][:, :1, :1].clone(), const_ab[1][:, :1, :1].clone())
    net = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular").double()

    def model(x, t):
        return net(x) * (t.view(-1, 1, 1, 1) / 1000)

    for cfg in (SamplerConfig("ancestral", steps=30), SamplerConfig("ddim", steps=30, eta=0.3)):
        a = sample(model, spd_const, [1, 2], (3, 8, 8), config=cfg, dtype=F64)
        b = sample(model, ddpm_const, [1, 2], (3, 8, 8), config=cfg, dtype=F64)
        assert torch.allclose(a, b, atol=1e-10)


def test_sampler_config_errors():
    with pytest.raises(ValueError, match="kind"):
        SamplerConfig("euler")
    with pytest.raises(ValueError, match="eta"):
        SamplerConfig("ddim", eta=1.5)
    with pytest.raises(ValueError, match="DDIM"):
        SamplerConfig("ancestral", eta=0.5)
    with pytest.raises(ValueError, match="seed"):
        sample(lambda x, t: x, SPDSchedule(8, 10), [], (3, 8, 8))


def test_same_seed_same_samples_with_a_unet():
    from spd_tune.unet import UNet

    torch.manual_seed(0)
    model = UNet.from_preset("micro").eval()
    torch.nn.init.normal_(model.out[-1].weight, std=0.01)  # leave the zero-initialised output
    sched = SPDSchedule(16, 100)
    runs = [sample(model, sched, [7, 8], (3, 16, 16), config=SamplerConfig(steps=10)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and bool(torch.isfinite(runs[0]).all())
