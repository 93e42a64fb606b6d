"""What a search concludes, computed from Tune's records: the ranking, the Pareto front, the summary table, and
the names and predicates every other piece uses (a trial's Train run, its final metric, "stopped early")."""

from __future__ import annotations

import math
import statistics

from ..train.config import stopped_early
from .front import nondominated
from .space import Space

TRIAL_RUN_PREFIX = "train-"


def trial_run_name(trial_id: str) -> str:
    """The Train run of a Tune trial: a fixed name, so a restarted trial resumes its own run."""
    return f"{TRIAL_RUN_PREFIX}{trial_id}"


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


def pooled_std(a: dict, b: dict) -> float:
    return math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)


def _var_of_mean(result: dict) -> float:
    n = max(1, len(result.get("values", ())))
    return result["std"] ** 2 / n


def verdict(metric: str, info: dict) -> list[str]:
    """The plain-words lines under the champion: its score with its noise, the baseline, the runner-up."""
    final, lines = info.get("final"), []
    if not final:
        return lines
    n = len(final["values"])
    lines.append(f"champion {info['trial_id']}: final {metric} {final['mean']:.4f} ± {final['std']:.4f} (std over "
                 f"{n} seed sets). The error bar covers sampling noise only, on the same trained weights; a second "
                 "training seed would move the score more.")
    runner = info.get("runner_up")
    if runner and runner["final"]["mean"] - final["mean"] < pooled_std(final, runner["final"]):
        lines.append(f"the runner-up, trial {runner['trial_id']} ({runner['final']['mean']:.4f} ± "
                     f"{runner['final']['std']:.4f}), is within one pooled standard deviation of the champion: "
                     "these final scores do not separate the two.")
    base, vs = info.get("baseline"), info.get("vs_baseline")
    if base and vs:
        if base["trial"] == info["trial_id"]:
            lines.append(f"the champion is the baseline (the space's first trial, trial {base['trial']}).")
        else:
            word = "better than" if vs["significant"] else "not distinguishable from"
            lines.append(f"against the baseline (the space's first trial, trial {base['trial']}: {base['mean']:.4f} ± "
                         f"{base['std']:.4f}): delta {vs['delta']:+.4f} ± {vs['se']:.4f} (standard error), {word} "
                         "the baseline at twice the standard error.")
    return lines


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
    return nondominated(points, space.metric)


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


def summary_table(space: Space, results, costs: dict[str, dict] | None = None) -> str:
    """One line per trial, best first: its params, best rung score, kimg reached, state and, given ``costs``
    (search/costs.py), its resource-hours."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metric = df[space.metric].min() if df is not None and space.metric in df else math.nan
        kimg = r.metrics.get("kimg", 0) if r.metrics else 0
        state = "error" if r.error else "diverged" if diverged(r.metrics) else (
            "stopped" if stopped_early(kimg, space.max_kimg) else "complete")
        trial_id = r.metrics.get("trial_id", "?") if r.metrics else "?"
        rows.append((metric, trial_id, r.config, kimg, state))
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
