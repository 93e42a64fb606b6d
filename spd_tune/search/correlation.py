"""Rank correlation, as the stopping gate and rung trust measure it: Spearman's rho (scipy's) and a one-sided lower
confidence bound for it."""

from __future__ import annotations

import math


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho, ties averaged; NaN with fewer than 2 pairs or a constant side."""
    from scipy.stats import spearmanr  # scipy.stats takes a second to import: only once a correlation is measured

    if len(x) != len(y) or len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def lower_bound(rho: float, n: int, z: float = 1.6449) -> float:
    """One-sided 95% lower bound of a Spearman correlation from n pairs (Fisher z, variance 1.06 / (n - 3)).

    A perfect ranking has atanh(1) = inf, so it would give a bound of 1 at any n, and 4 pairs in order (1 chance in
    24 when the rungs say nothing) would open a gate. rho is therefore held half-way between 1 and the next value
    Spearman's rho can take with n pairs (one adjacent swap: 1 - 12 / (n (n^2 - 1))): 4 pairs then never open a gate
    at the default threshold, 5 pairs in order (1 in 120 by chance) do.
    """
    if n < 4 or not math.isfinite(rho):
        return math.nan
    edge = 1.0 - 6.0 / (n * (n * n - 1))
    r = min(max(rho, -edge), edge)
    return math.tanh(math.atanh(r) - z * math.sqrt(1.06 / (n - 3)))
