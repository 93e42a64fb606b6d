"""Stage 6, summary: what the search concludes, in numbers and in words. The champion's document (what
champion.json holds: every finalist's scores, the runner-up, the baseline and the comparison to it), every
trial's cost, rung trust against the final scores, the trial table, the verdict's lines and, in multi-objective
mode, the score-against-NFE front of the trials and the post-hoc points together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..costs import cost_lines, cost_summary, trial_costs
from ..front import with_posthoc
from ..results import final_metric_name, pareto_front, summary_table, verdict, versus
from ..space import Space
from ..trust import rung_trust, trust_metrics, trust_warnings
from .champion import Champion
from .final import POINTS, FinalResult, Judged, Scored
from .finalists import Finalists
from .posthoc import PosthocResult

FRONT_FILE = Path("posthoc") / "front.json"  # under the search's folder


@dataclass(frozen=True)
class Summary:
    document: Mapping | None  # champion.json's content (the record stage adds the registered model); None: no champion
    costs: Mapping[str, Mapping]  # trial id -> its resource-hours (search/costs.py)
    spent: Mapping  # the search's totals
    table: str  # one line per trial
    trust: Mapping[str, Mapping]  # rung trust, by metric name
    plain: Mapping[str, float]  # trial id -> its final mean at the plain point
    lines: tuple[str, ...]  # the champion, the verdict, the warnings and the cost, in words
    front: tuple[dict, ...] | None  # multi-objective mode: the score-against-NFE front
    metrics: Mapping[str, float]  # the parent run's own metrics


def summarise(space: Space, root: Path, finalists: Finalists, posthoc: PosthocResult, final: FinalResult,
              champion: Champion | None) -> Summary:
    records = list(finalists.records)
    costs = trial_costs(space, records, {j.finalist.trial_id: j.stage_seconds for j in final.judged})
    spent = cost_summary(space, costs)
    metrics = {"cost_hours_total": spent["total_hours"]}
    table = summary_table(space, records, costs)
    if champion is None:
        return Summary(None, costs, spent, table, {}, {}, (), None, metrics)
    document = champion_document(space, root, final, posthoc, champion)
    plain = {j.finalist.trial_id: j.scored["plain"].mean for j in final.judged if "plain" in j.scored}
    trust = rung_trust(space, records, plain)
    lines = (*champion_lines(space, document), *rescored_line(space, finalists, document, posthoc.ran),
             *verdict(space.metric, document), *trust_warnings(trust), *cost_lines(spent))
    metrics = {**trust_metrics(trust), **metrics, "cost_hours_no_early_stopping": spent["no_early_stopping_hours"]}
    front = None
    if space.search.multi_objective.enabled:
        front = tuple(with_posthoc(pareto_front(space, records), list(posthoc.front), space.metric))
    return Summary(document, costs, spent, table, trust, plain, lines, front, metrics)


def front_line(space: Space, front: tuple[dict, ...]) -> str:
    return f"Pareto front ({space.metric} vs NFE): " + ", ".join(
        f"{p['trial_id']}{' post-hoc' if p.get('stage') == 'posthoc' else ''} ({p[space.metric]:.4f}, "
        f"{p['nfe']} NFE)" for p in front)


def champion_document(space: Space, root: Path, final: FinalResult, posthoc: PosthocResult,
                      champion: Champion) -> dict:
    """champion.json: the champion's row with its comparisons, where its files are and every finalist's row."""
    rows = [finalist_row(space, j, posthoc.ran) for j in final.judged]
    document = {**with_comparisons(rows), "best_dir": str(champion.best_dir),
                "finalists": rows if len(rows) > 1 or posthoc.ran else None}
    if posthoc.ran:
        document["posthoc_front"] = str(Path(root) / FRONT_FILE)
    return document


def _final(scored: Scored) -> dict:
    return {"mean": scored.mean, "std": scored.std, "values": list(scored.values)}


def finalist_row(space: Space, j: Judged, posthoc_ran: bool) -> dict:
    """One finalist in champion.json: its rung score and params, and its final scores when the protocol ran (at
    both points, with the chosen one's sampling, after a post-hoc stage)."""
    f, name = j.finalist, final_metric_name(space.metric)
    row = {"trial_id": f.trial_id, space.metric: f.score, "checkpoint": f.checkpoint.path, "params": dict(f.params),
           "baseline": f.baseline}
    if j.pick is None:
        return row
    row.update({name: j.pick.mean, "final": _final(j.pick)})
    if posthoc_ran:
        row.update(chosen=j.chosen, ema=dict(j.pick.ema), sampling=dict(j.pick.sampling), nfe=j.pick.nfe,
                   posthoc_evaluations=j.posthoc_evaluations, posthoc_seconds=j.posthoc_seconds)
        for point in (p for p in POINTS if p in j.scored):
            s = j.scored[point]
            row[point] = {name: s.mean, "final": _final(s), "nfe": s.nfe, "ema": dict(s.ema),
                          "sampling": dict(s.sampling)}
    row["final_seconds"] = sum(s.seconds for s in j.scored.values())
    return row


def with_comparisons(rows: list[dict]) -> dict:
    """The champion's row (rows are best first) with its runner-up, the baseline and the comparison to it."""
    best = dict(rows[0])
    if "final" not in best:
        return best
    if len(rows) > 1 and rows[1].get("final"):
        best["runner_up"] = {"trial_id": rows[1]["trial_id"], "final": rows[1]["final"]}
        best["vs_runner_up"] = versus(best["final"], rows[1]["final"])
    base = next((r for r in rows if r.get("baseline")), None)
    best["baseline"] = None if base is None else {"trial": base["trial_id"], "mean": base["final"]["mean"],
                                                  "std": base["final"]["std"]}
    best["vs_baseline"] = None if base is None else versus(best["final"], base["final"])
    return best


def _rounded(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def champion_lines(space: Space, document: Mapping) -> list[str]:
    final = final_metric_name(space.metric)
    final_text = f", {final} {document[final]:.4f}" if final in document else ""
    if document.get("final"):
        final_text += f" ± {document['final']['std']:.4f} (std over {len(document['final']['values'])} seed sets)"
    params = ", ".join(f"{k}={_rounded(v)}" for k, v in document["params"].items())
    return [f"champion: trial {document['trial_id']}, {space.metric} {document[space.metric]:.4f}{final_text}; "
            f"{params}",
            f"  checkpoint copied to {document['best_dir']}"]


def rescored_line(space: Space, finalists: Finalists, document: Mapping, posthoc_ran: bool) -> list[str]:
    """One line when the champion is not the trial with the best rung score: why the ranking changed."""
    first = finalists.chosen[0] if finalists.chosen else None
    if first is None or first.trial_id == document["trial_id"] or not document.get("final"):
        return []
    f = space.search.final
    how = f"{f.samples} samples x {len(f.seed_sets())} seed set(s)" + (
        ", each finalist at its plain and its best post-hoc EMA and sampler" if posthoc_ran else "")
    return [f"the champion is not the trial with the best rung score (trial {first.trial_id}, {space.metric} "
            f"{first.score:.4f}): the final protocol ({how}) re-scored the finalists and ranked trial "
            f"{document['trial_id']} first."]
