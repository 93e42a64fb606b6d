"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", section 3).

A power-function EMA of exponent gamma at training step t averages the weights seen so far with density
p(tau; t, gamma) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]: its width grows with the run, so one
setting suits runs of any length. Its width relative to t is sigma_rel. A few such averages stored at a few
steps ("snapshots") are enough to rebuild the average of any other sigma_rel at any of those steps: the
target's density is a least-squares combination of the snapshots' densities, and the same combination of
their weights is the rebuilt average.

Pure math on tensors and float64 numpy; no framework imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch


def sigma_rel_of(gamma: float) -> float:
    """The relative standard deviation of the power-function profile of exponent ``gamma`` (> -1)."""
    if not gamma > -1:
        raise ValueError(f"gamma={gamma} must be > -1")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma_rel: float) -> float:
    """The exponent whose profile has relative standard deviation ``sigma_rel`` in (0, sqrt(1/12)).

    sigma_rel^-2 = (gamma + 2)^2 (gamma + 3) / (gamma + 1), i.e. the cubic
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2; its largest real root."""
    if not 0 < sigma_rel < math.sqrt(1 / 12):
        raise ValueError(f"sigma_rel={sigma_rel} must be in (0, {math.sqrt(1 / 12):.4f})")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    real = roots[np.abs(roots.imag) < 1e-9 * np.maximum(1.0, np.abs(roots.real))].real
    return float(real.max())


def power_beta(step: int, gamma: float) -> float:
    """The decay of the power-function EMA after optimiser step ``step`` (1-based): (1 - 1/t)^(gamma + 1).
    It is 0 at the first step, so the average starts as the weights themselves and carries no bias from the
    initialisation."""
    if step < 1:
        raise ValueError(f"step={step} must be >= 1")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


class PowerEMA:
    """Power-function averages of a module's parameters and buffers, one per sigma_rel, updated in place."""

    def __init__(self, module: torch.nn.Module, sigma_rels: Sequence[float]) -> None:
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_of(s) for s in self.sigma_rels)
        self.averages = [{k: v.detach().clone() for k, v in module.state_dict().items()} for _ in self.gammas]

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (1-based, counted from the start of the run)."""
        current = module.state_dict()
        floats = [k for k, v in current.items() if v.is_floating_point()]
        others = [k for k, v in current.items() if not v.is_floating_point()]
        sources = [current[k] for k in floats]
        for gamma, average in zip(self.gammas, self.averages):
            torch._foreach_lerp_([average[k] for k in floats], sources, 1.0 - power_beta(step, gamma))
            for k in others:  # integer buffers (e.g. counters) follow the model
                average[k].copy_(current[k])

    def state_dict(self) -> dict:
        return {"sigma_rels": list(self.sigma_rels), "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["sigma_rels"]) != self.sigma_rels:
            raise ValueError(f"EMA state of sigma_rels {state['sigma_rels']}, expected {list(self.sigma_rels)}")
        for mine, theirs in zip(self.averages, state["averages"]):
            for k, v in mine.items():
                v.copy_(theirs[k])


@dataclass(frozen=True)
class Snapshot:
    """One stored average: the profile it was taken of and when."""

    step: int
    sigma_rel: float


def _overlaps(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """Inner products of profile densities, int_0^min(ta, tb) p(tau; ta, ga) p(tau; tb, gb) dtau, as a matrix.

    = (ga + 1)(gb + 1) m^(ga + gb + 1) / ((ga + gb + 1) ta^(ga + 1) tb^(gb + 1)) with m = min(ta, tb), taken in
    logs: steps are rescaled to at most 1 first (the solution does not depend on the time unit) and powers of
    steps up to ~10^6 with exponents near 20 would otherwise overflow."""
    ta, ga = t_a[:, None], g_a[:, None]
    tb, gb = t_b[None, :], g_b[None, :]
    m = np.minimum(ta, tb)
    log = (np.log(ga + 1) + np.log(gb + 1) + (ga + gb + 1) * np.log(m) - np.log(ga + gb + 1)
           - (ga + 1) * np.log(ta) - (gb + 1) * np.log(tb))
    return np.exp(log)


def reconstruction_coefficients(snapshots: Sequence[Snapshot], step: int, sigma_rel: float,
                                rcond: float = 1e-12) -> np.ndarray:
    """The float64 coefficients x with sum_i x_i snapshot_i ~= the average of ``sigma_rel`` at ``step``: the
    least-squares fit of the target profile's density by the snapshots' densities (solved with an SVD cut-off,
    since snapshots of neighbouring steps are nearly collinear)."""
    if not snapshots:
        raise ValueError("no EMA snapshots to reconstruct from")
    if step > max(s.step for s in snapshots):
        raise ValueError(f"step {step} is after the last snapshot (step {max(s.step for s in snapshots)})")
    scale = float(max(s.step for s in snapshots))
    t = np.array([s.step for s in snapshots], dtype=np.float64) / scale
    g = np.array([gamma_of(s.sigma_rel) for s in snapshots], dtype=np.float64)
    a = _overlaps(t, g, t, g)
    b = _overlaps(t, g, np.array([step / scale]), np.array([gamma_of(sigma_rel)]))[:, 0]
    x, *_ = np.linalg.lstsq(a, b, rcond=rcond)
    return x


def reconstruct(snapshots: Sequence[Snapshot], weights: Iterable[dict[str, torch.Tensor]], step: int,
                sigma_rel: float) -> dict[str, torch.Tensor]:
    """The average of ``sigma_rel`` at ``step`` from the snapshots' weights (one state dict per snapshot, in the
    same order, oldest first), summed in float64 and returned in each tensor's own dtype."""
    x = reconstruction_coefficients(snapshots, step, sigma_rel)
    out: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for coefficient, state in zip(x, weights, strict=True):
        last = state
        for k, v in state.items():
            if not v.is_floating_point():
                continue
            acc = out.get(k)
            term = v.detach().to(torch.float64) * float(coefficient)
            out[k] = term if acc is None else acc + term
    # integer buffers (e.g. counters) are not averaged: they come from the latest snapshot
    return {k: (out[k].to(v.dtype) if k in out else v.clone()) for k, v in last.items()}
