"""Power-function EMA and its post-hoc reconstruction from snapshots (EDM2, section 3)."""

import math

import numpy as np
import pytest
import torch

from spd_tune.core.ema import (
    PowerEMA,
    Snapshot,
    gamma_of,
    power_beta,
    reconstruct,
    reconstruction_coefficients,
    sigma_rel_of,
)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2, 0.28])
def test_gamma_and_sigma_rel_are_inverse(sigma_rel):
    assert math.isclose(sigma_rel_of(gamma_of(sigma_rel)), sigma_rel, rel_tol=1e-10)


def test_edm2_profiles_have_their_published_exponents():
    assert gamma_of(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's two stored profiles
    assert gamma_of(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, math.nan])
def test_sigma_rel_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="sigma_rel"):
        gamma_of(bad)


def test_power_average_weights_steps_as_tau_to_the_gamma():
    """A scalar 'weight' equal to the step number: its power average at step t is sum tau * w(tau), which for
    a tau^gamma density is close to t (gamma + 1) / (gamma + 2)."""
    module = torch.nn.Linear(1, 1, bias=False)
    ema = PowerEMA(module, [0.05, 0.10])
    steps = 2000
    for step in range(1, steps + 1):
        module.weight.data.fill_(float(step))
        ema.update(module, step)
    assert power_beta(1, 6.9) == 0.0
    for gamma, average in zip(ema.gammas, ema.averages):
        expected = steps * (gamma + 1) / (gamma + 2)
        assert average["weight"].item() == pytest.approx(expected, rel=5e-3)


def test_the_target_profile_among_the_snapshots_is_itself():
    snaps = [Snapshot(step, s) for step in (100, 200, 300, 400) for s in (0.05, 0.10)]
    x = reconstruction_coefficients(snaps, 400, 0.10)
    assert np.all(np.isfinite(x)) and x.dtype == np.float64
    assert x[-1] == pytest.approx(1.0, abs=1e-6) and np.abs(x[:-1]).max() < 1e-6


def test_huge_step_counts_do_not_overflow():
    snaps = [Snapshot(step, s) for step in range(200_000, 2_000_001, 200_000) for s in (0.05, 0.10)]
    x = reconstruction_coefficients(snaps, 2_000_000, 0.075)
    assert np.all(np.isfinite(x)) and sum(x) == pytest.approx(1.0, abs=1e-3)  # an average of averages


def test_reconstruction_after_the_last_snapshot_is_refused():
    with pytest.raises(ValueError, match="after the last snapshot"):
        reconstruction_coefficients([Snapshot(100, 0.05)], 200, 0.05)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.net(x)


def test_reconstruction_matches_a_profile_tracked_during_training():
    """A short real training (Adam on a regression) keeps EDM2's two profiles, snapshotted every 50 steps, and
    a third profile tracked directly; the third, rebuilt from the snapshots at the last one, agrees with the
    tracked one to 1% of how far the tracked profile lies from the nearest stored one."""
    torch.manual_seed(0)
    model = Tiny()
    stored, direct = PowerEMA(model, [0.05, 0.10]), PowerEMA(model, [0.075])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.randn(256, 8), torch.randn(256, 8)
    snaps, weights = [], []
    steps, every = 800, 50
    for step in range(1, steps + 1):
        idx = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.count += 1
        stored.update(model, step)
        direct.update(model, step)
        if step % every == 0:
            for s, avg in zip(stored.sigma_rels, stored.averages):
                snaps.append(Snapshot(step, s))
                weights.append({k: v.clone() for k, v in avg.items()})
    rebuilt = reconstruct(snaps, weights, steps, 0.075)
    target = direct.averages[0]
    assert rebuilt["count"].item() == steps  # integer buffers come from the latest snapshot

    def flat(state):
        return torch.cat([v.flatten().double() for v in state.values() if v.is_floating_point()])

    error = (flat(rebuilt) - flat(target)).norm()
    nearest = min((flat(avg) - flat(target)).norm() for avg in stored.averages)
    assert nearest > 0 and error < 0.01 * nearest, (error.item(), nearest.item())
    assert all(v.dtype == target[k].dtype for k, v in rebuilt.items())
