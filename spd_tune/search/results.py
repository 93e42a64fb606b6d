"""What a search concludes, computed from its trial records (search/trials.py): the ranking, the Pareto front,
the summary table, seed-set statistics and the verdict's plain-words lines."""

from __future__ import annotations

import math
import statistics

from .front import nondominated
from .space import Space
from .trials import TrialRecord


def final_metric_name(metric: str) -> str:
    """The final protocol's score of a finalist (``final_fid``, ``final_proxy_fd64``)."""
    return f"final_{metric}"


def seed_set_result(values: list[float]) -> dict:
    """A finalist's final protocol over its seed sets: {mean, std, values}; std is the sample standard deviation
    (0 for one set), and a non-finite value makes the mean NaN rather than being dropped."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        return {"mean": math.nan, "std": math.nan, "values": values}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def versus(champion: dict, other: dict) -> dict:
    """champion - other on final means, with the standard error of that difference from the seed sets.
    ``significant``: the difference is more than twice its standard error and favours the champion (about a
    95% two-sided test under a normal approximation). It covers sampling noise only, on fixed trained weights."""
    delta = champion["mean"] - other["mean"]
    se = math.sqrt(_var_of_mean(champion) + _var_of_mean(other))
    significant = bool(math.isfinite(delta) and delta < 0 and abs(delta) > 2 * se)
    return {"delta": delta, "se": se, "significant": significant}


def _word(vs: dict) -> str:
    """The one rule for every comparison the search states: ``versus``'s, twice the standard error."""
    return "better than" if vs["significant"] else "not distinguishable from"


def _var_of_mean(result: dict) -> float:
    n = max(1, len(result.get("values", ())))
    return result["std"] ** 2 / n


def verdict(metric: str, info: dict) -> list[str]:
    """The plain-words lines under the champion: its score with its noise, the baseline, the runner-up."""
    final, lines = info.get("final"), []
    if not final:
        return lines
    n = len(final["values"])
    lines.append(f"the error bar (std over {n} seed sets) covers sampling noise only, on the same trained weights; a "
                 f"second training seed would move the {metric} more.")
    runner = info.get("runner_up")
    if runner and runner.get("final"):
        vs = versus(final, runner["final"])
        lines.append(f"against the runner-up, trial {runner['trial_id']} ({runner['final']['mean']:.4f} ± "
                     f"{runner['final']['std']:.4f}): delta {vs['delta']:+.4f} ± {vs['se']:.4f} (standard error), "
                     f"{_word(vs)} the runner-up at twice the standard error.")
    base, vs = info.get("baseline"), info.get("vs_baseline")
    if base and vs:
        if base["trial"] == info["trial_id"]:
            lines.append(f"the champion is the baseline (the space's first trial, trial {base['trial']}).")
        else:
            word = _word(vs)
            lines.append(f"against the baseline (the space's first trial, trial {base['trial']}: {base['mean']:.4f} ± "
                         f"{base['std']:.4f}): delta {vs['delta']:+.4f} ± {vs['se']:.4f} (standard error), {word} "
                         "the baseline at twice the standard error.")
    return lines


def pareto_front(space: Space, records: list[TrialRecord]) -> list[dict]:
    """Trials whose (final score, NFE) no other trial beats in both, sorted by NFE."""
    points = []
    for record in records:
        m = record.last
        if isinstance(m.get(space.metric), (int, float)) and math.isfinite(m[space.metric]) and "nfe" in m:
            points.append({"trial_id": record.trial_id, space.metric: m[space.metric], "nfe": int(m["nfe"]),
                           "params": dict(record.params)})
    return nondominated(points, space.metric)


def ranked_trials(space: Space, records: list[TrialRecord]) -> list[tuple[float, TrialRecord]]:
    """(best finite metric, record) of every trial, best first; in multi-objective mode only the Pareto front
    within the NFE budget, by final score."""
    if space.search.multi_objective.enabled:
        budget = space.search.multi_objective.nfe_budget
        keep = {p["trial_id"] for p in pareto_front(space, records) if budget is None or p["nfe"] <= budget}
        return sorted(((r.last[space.metric], r) for r in records if r.trial_id in keep), key=lambda item: item[0])
    ranked = [(r.best_score, r) for r in records if r.trial_id and not r.diverged and r.finite_reports]
    return sorted(ranked, key=lambda item: item[0])


def summary_table(space: Space, records: list[TrialRecord], costs: dict[str, dict] | None = None) -> str:
    """One line per trial, best first: its params, best rung score, kimg reached, state and, given ``costs``
    (search/costs.py), its resource-hours."""
    rows = []
    for r in records:
        metric = r.best_score if r.finite_reports else min(
            (rep.score for rep in r.reports if not math.isnan(rep.score)), default=math.nan)
        rows.append((metric, r.trial_id or "?", r.params, r.kimg, r.state(space.max_kimg)))
    rows.sort(key=lambda row: (math.isnan(row[0]), row[0]))
    names = list(space.search.params)
    unit = "GPU-h" if space.train.resources.gpus_per_worker > 0 else "CPU-h"
    lines = [f"{'trial':<12}" + "".join(f"{n:>12}" for n in names) + f"{space.metric:>14}{'kimg':>8}  {'state':<9}"
             + (f"{unit:>10}" if costs is not None else "")]
    for metric, trial_id, config, kimg, state in rows:
        values = "".join(f"{_fmt(config.get(n)):>12}" for n in names)
        cost = f"{costs[trial_id]['hours']:>10.3g}" if costs is not None and trial_id in costs else ""
        lines.append(f"{trial_id:<12}{values}{metric:>14.4f}{kimg:>8g}  {state:<9}{cost}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
