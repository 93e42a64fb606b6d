"""What a search concludes, computed from Tune's records: the ranking, the Pareto front, the summary table, and
the names and predicates every other piece uses (a trial's Train run, its final metric, "stopped early")."""

from __future__ import annotations

import math

from ..train.config import stopped_early
from .space import Space

TRIAL_RUN_PREFIX = "train-"


def trial_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial: a fixed name, so a restarted trial resumes its own run."""
    return f"{TRIAL_RUN_PREFIX}{trial_id}"


def final_metric_name(metric: str) -> str:
    """The final protocol's score of a finalist (``final_fid``, ``final_proxy_fd64``)."""
    return f"final_{metric}"


def diverged(result: dict | None) -> bool:
    """The run stopped on a non-finite loss (train/loop.py): a failed trial, whatever its earlier scores."""
    return bool(result) and bool(result.get("diverged"))


def pareto_front(space: Space, results) -> list[dict]:
    """Trials whose (final score, NFE) no other trial beats in both, sorted by NFE."""
    points = []
    for result in results:
        m = result.metrics or {}
        if isinstance(m.get(space.metric), (int, float)) and math.isfinite(m[space.metric]) and "nfe" in m:
            points.append({"trial_id": m["trial_id"], space.metric: m[space.metric], "nfe": int(m["nfe"]),
                           "params": {k: result.config[k] for k in space.search.params}})
    front = [p for p in points if not any(
        q[space.metric] <= p[space.metric] and q["nfe"] <= p["nfe"] and
        (q[space.metric] < p[space.metric] or q["nfe"] < p["nfe"]) for q in points)]
    return sorted(front, key=lambda p: p["nfe"])


def ranked_trials(space: Space, results) -> list[tuple[float, object]]:
    """(best finite metric, result) of every trial, best first; in multi-objective mode only the Pareto front
    within the NFE budget, by final score."""
    if space.search.multi_objective.enabled:
        budget = space.search.multi_objective.nfe_budget
        keep = {p["trial_id"] for p in pareto_front(space, results) if budget is None or p["nfe"] <= budget}
        return sorted(((r.metrics[space.metric], r) for r in results if (r.metrics or {}).get("trial_id") in keep),
                      key=lambda item: item[0])
    ranked = []
    for result in results:
        if diverged(result.metrics):
            continue
        df = result.metrics_dataframe
        if df is None or space.metric not in df:
            continue
        values = [v for v in df[space.metric] if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            ranked.append((min(values), result))
    return sorted(ranked, key=lambda item: item[0])


def summary_table(space: Space, results) -> str:
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metric = df[space.metric].min() if df is not None and space.metric in df else math.nan
        kimg = r.metrics.get("kimg", 0) if r.metrics else 0
        state = "error" if r.error else "diverged" if diverged(r.metrics) else (
            "stopped" if stopped_early(kimg, space.max_kimg) else "complete")
        rows.append((metric, r.metrics.get("trial_id", "?") if r.metrics else "?", r.config, kimg, state))
    rows.sort(key=lambda row: (math.isnan(row[0]), row[0]))
    names = list(space.search.params)
    lines = [f"{'trial':<12}" + "".join(f"{n:>12}" for n in names) + f"{space.metric:>14}{'kimg':>8}  state"]
    for metric, trial_id, config, kimg, state in rows:
        values = "".join(f"{_fmt(config.get(n)):>12}" for n in names)
        lines.append(f"{trial_id:<12}{values}{metric:>14.4f}{kimg:>8g}  {state}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
