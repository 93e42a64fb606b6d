"""Rung trust: did early stopping rank trials the way the final protocol does?

ASHA stops trials by their scores at the rungs (few samples, few sampler steps, early weights). After the search,
Spearman's rank correlation between each rung's scores and the finalists' final scores (at their plain point:
the final protocol's sampler on the rung EMA, so only the protocol differs), and between consecutive rungs over
every trial that reached both, says how far those early rankings can be trusted. Logged on the parent run as
``trust_*`` metrics with their pair counts, always, even when the pairs are few.
"""

from __future__ import annotations

import math

from .correlation import spearman
from .space import Space
from .trials import TrialRecord

MIN_RHO, MIN_PAIRS = 0.5, 4  # below either, the summary warns


def rung_table(space: Space, records: list[TrialRecord]) -> dict[str, dict[float, float]]:
    """trial id -> {rung kimg: its score at that rung}: the first report at or after each rung and before the next."""
    rungs = space.rungs()
    table = {}
    for record in (r for r in records if r.trial_id):
        scores = {}
        for i, rung in enumerate(rungs):
            upper = rungs[i + 1] if i + 1 < len(rungs) else math.inf
            at = [r.score for r in record.finite_reports if rung - 1e-9 <= r.kimg < upper - 1e-9]
            if at:
                scores[rung] = at[0]
        table[record.trial_id] = scores
    return table


def _name(kimg: float) -> str:
    return f"kimg{kimg:g}"


def rung_trust(space: Space, records: list[TrialRecord], finals: dict[str, float]) -> dict[str, dict]:
    """{metric name: {rho, pairs, rung, against}} for each rung against the final scores (trial id -> plain-point
    final mean) and for each pair of consecutive rungs."""
    table = rung_table(space, records)
    rungs = space.rungs()
    out = {}
    for rung in rungs:
        ids = [t for t, s in table.items() if rung in s and t in finals and math.isfinite(finals[t])]
        out[f"trust_{_name(rung)}_final"] = {
            "rho": spearman([table[t][rung] for t in ids], [finals[t] for t in ids]), "pairs": len(ids),
            "rung": rung, "against": "final"}
    for a, b in zip(rungs, rungs[1:]):
        ids = [t for t, s in table.items() if a in s and b in s]
        out[f"trust_{_name(a)}_{_name(b)}"] = {
            "rho": spearman([table[t][a] for t in ids], [table[t][b] for t in ids]), "pairs": len(ids),
            "rung": a, "against": f"kimg {b:g}"}
    return out


def trust_metrics(trust: dict[str, dict]) -> dict[str, float]:
    """The MLflow metrics: each correlation (NaN when undefined) and its pair count."""
    out = {}
    for name, t in trust.items():
        out[name] = t["rho"]
        out[f"{name}_pairs"] = float(t["pairs"])
    return out


def trust_warnings(trust: dict[str, dict]) -> list[str]:
    """One line naming every rung whose correlation is weak or rests on too few pairs, and what to change."""
    weak = []
    for t in trust.values():
        if t["pairs"] < MIN_PAIRS or not math.isfinite(t["rho"]) or t["rho"] < MIN_RHO:
            rho = f"{t['rho']:.2f}" if math.isfinite(t["rho"]) else "undefined"
            weak.append(f"kimg {t['rung']:g} vs {t['against']}: rho {rho} over {t['pairs']} pair(s)")
    if not weak:
        return []
    return [f"warning: rung trust (Spearman's rho of rung scores against later scores) is below {MIN_RHO} or rests "
            f"on fewer than {MIN_PAIRS} pairs for: {'; '.join(weak)}. Early stopping at those rungs may drop trials "
            "that would win: consider a later search.asha.grace_kimg, more rung samples (train.eval.samples), or "
            "more finalists (search.final.top_k)."]
