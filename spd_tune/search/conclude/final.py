"""Stage 4, final: the final protocol (``search.final``: many samples, over several seed sets) on every finalist,
at its plain point (the protocol's own sampler on the trial's EMA) and, after a post-hoc stage, at its best
post-hoc point too, so that the post-hoc gain is measured. Each finalist is judged by the better of its points
(within the NFE budget in multi-objective mode), and the finalists are ordered by it.

One path for both modes. The scores are kept in the search's Optuna storage as they come (in the finalist's
post-hoc study, or in the search's own study without a post-hoc stage), so that a resumed driver repeats no
finished evaluation. Without ``search.final.top_k`` nothing is scored and the rung order stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import optuna

from ...core.samplers import SamplerConfig, uses_eta
from ...posthoc import PosthocPoint, ema_of, sampling_of
from ..posthoc import open_study, posthoc_study_name
from ..results import seed_set_result
from ..space import Space
from .evaluator import Evaluate, Job
from .finalists import Finalist, Finalists
from .posthoc import PosthocResult, Say

FINAL_ATTR = "spd_tune.final"  # a study's user attribute: the final protocol's results, by point name
POINTS = ("plain", "posthoc")


class FinalStore(Protocol):
    """Where a finalist's final scores are kept between drivers: point name -> stored result."""

    def load(self, trial_id: str) -> dict: ...

    def save(self, trial_id: str, stored: dict) -> None: ...


class StudyStore:
    """The final scores as a user attribute: of the finalist's post-hoc study (``<space>/posthoc/<trial>``) when
    the search has the stage, else of the search's own study, one attribute per finalist."""

    def __init__(self, space: Space, optuna_url: str):
        self.space, self.url = space, optuna_url

    def _where(self, trial_id: str) -> tuple[optuna.Study, str]:
        name, seed = self.space.train.name, self.space.search.seed
        if self.space.search.posthoc.enabled:
            return open_study(self.url, posthoc_study_name(name, trial_id), seed), FINAL_ATTR
        return optuna.load_study(study_name=name, storage=self.url), f"{FINAL_ATTR}.{trial_id}"

    def load(self, trial_id: str) -> dict:
        study, key = self._where(trial_id)
        return dict(study.user_attrs.get(key, {}))

    def save(self, trial_id: str, stored: dict) -> None:
        study, key = self._where(trial_id)
        study.set_user_attr(key, stored)


@dataclass(frozen=True)
class Scored:
    """The final protocol at one point of a finalist, over the seed sets."""

    point: PosthocPoint
    mean: float  # NaN when a seed set's score is not finite
    std: float
    values: tuple[float, ...]
    nfe: int
    seconds: float  # the evaluations' wall time, for the search's cost
    ema: Mapping = field(default_factory=dict)  # the average the point uses (champion.json's "ema")
    sampling: Mapping = field(default_factory=dict)  # its sampler, steps and eta (champion.json's "sampling")

    @property
    def rank_key(self) -> float:
        return self.mean if math.isfinite(self.mean) else math.inf


@dataclass(frozen=True)
class Judged:
    finalist: Finalist
    scored: Mapping[str, Scored] = field(default_factory=dict)  # "plain", and "posthoc" when the stage found one
    chosen: str = ""  # the point it is judged by ("" when the protocol did not run)
    posthoc_evaluations: int = 0
    posthoc_seconds: float = 0.0

    @property
    def pick(self) -> Scored | None:
        return self.scored.get(self.chosen)

    @property
    def stage_seconds(self) -> float:
        return self.posthoc_seconds + sum(s.seconds for s in self.scored.values())


@dataclass(frozen=True)
class FinalResult:
    judged: tuple[Judged, ...]  # best first: by the chosen point's final mean, else by rung score
    ran: bool  # the final protocol scored the finalists


def nfe_budget(space: Space) -> int | None:
    mo = space.search.multi_objective
    return mo.nfe_budget if mo.enabled else None


def plain_point(space: Space) -> PosthocPoint:
    """The final protocol's own sampler with the trial's rung EMA: what the champion would be without the stage."""
    return PosthocPoint(space.search.final.sampler_config(space.train.eval.sampler))


def best_posthoc_point(rows: tuple[dict, ...], budget: int | None) -> PosthocPoint | None:
    """The finalist's lowest-scoring post-hoc point (within the NFE budget, in multi-objective mode)."""
    usable = [r for r in rows if math.isfinite(r.get("score", math.nan)) and (budget is None or r["nfe"] <= budget)]
    if not usable:
        return None
    p = min(usable, key=lambda r: (r["score"], r["trial"]))["point"]
    return PosthocPoint(SamplerConfig(p["sampler"], steps=p["steps"], eta=p["eta"]), sigma_rel=p["sigma_rel"])


def choose(scored: Mapping[str, Scored], budget: int | None) -> str:
    """The point a finalist is judged by: the lower final mean, within the NFE budget if any point is."""
    names = [n for n in ("posthoc", "plain") if n in scored]
    within = [n for n in names if budget is None or scored[n].nfe <= budget] or names
    return min(within, key=lambda n: scored[n].rank_key)


def run(space: Space, finalists: Finalists, posthoc: PosthocResult, store: FinalStore, evaluate: Evaluate,
        say: Say) -> FinalResult:
    """Score every finalist's points (all of them in one parallel batch), judge and order them."""
    if not space.search.final.top_k:
        return FinalResult(tuple(Judged(f) for f in finalists.chosen), ran=False)
    budget = nfe_budget(space)
    wanted = {}
    for finalist in finalists.chosen:
        points = {"plain": plain_point(space)}
        best = best_posthoc_point(posthoc.rows(finalist.trial_id), budget)
        if best is not None:
            points["posthoc"] = best
        wanted[finalist.trial_id] = points
    scored = score_points(space, finalists.chosen, wanted, store, evaluate)
    judged = []
    for finalist in finalists.chosen:
        mine, rows = scored[finalist.trial_id], posthoc.rows(finalist.trial_id)
        judged.append(Judged(finalist, mine, choose(mine, budget), len(rows),
                             sum(r.get("seconds", 0.0) for r in rows)))
    judged.sort(key=lambda j: j.pick.rank_key)
    if posthoc.ran:
        for j in judged:
            say(judged_line(j))
    return FinalResult(tuple(judged), ran=True)


def score_points(space: Space, finalists: tuple[Finalist, ...], wanted: Mapping[str, Mapping[str, PosthocPoint]],
                 store: FinalStore, evaluate: Evaluate) -> dict[str, dict[str, Scored]]:
    """trial id -> point name -> its final protocol. A point scored before (a resumed driver) is read back from
    the store instead of being evaluated again; the rest are evaluated together."""
    f = space.search.final
    sets = f.seed_sets()
    stored = {x.trial_id: store.load(x.trial_id) for x in finalists}
    todo = {(x.trial_id, name): p for x in finalists for name, p in wanted[x.trial_id].items()
            if stored[x.trial_id].get(name, {}).get("point") != p.as_dict()
            or len(stored[x.trial_id][name].get("values", ())) != len(sets)}
    by_id = {x.trial_id: x for x in finalists}
    jobs = list(dict.fromkeys((t, p, seed) for (t, _), p in todo.items() for seed in sets))  # plain may be best
    results = dict(zip(jobs, evaluate([(by_id[t], Job(p, f.samples, seed)) for t, p, seed in jobs])))
    for (trial_id, name), p in todo.items():
        runs = [results[(trial_id, p, seed)] for seed in sets]
        summary = seed_set_result([r["score"] for r in runs])
        stored[trial_id][name] = {**{k: v for k, v in runs[0].items() if k not in ("metric", "score", "seconds")},
                                  "score": summary["mean"], "std": summary["std"], "values": summary["values"],
                                  "seconds": sum(r.get("seconds", 0.0) for r in runs)}
    for trial_id in {t for t, _ in todo}:
        store.save(trial_id, stored[trial_id])
    return {x.trial_id: {name: _scored(x, p, stored[x.trial_id][name]) for name, p in wanted[x.trial_id].items()}
            for x in finalists}


def _scored(finalist: Finalist, point: PosthocPoint, stored: dict) -> Scored:
    return Scored(point, float(stored["score"]), float(stored.get("std", math.nan)),
                  tuple(float(v) for v in stored.get("values", ())), int(stored["nfe"]),
                  float(stored.get("seconds", 0.0)), ema_of(finalist.cfg, point.sigma_rel),
                  sampling_of(point, int(stored["nfe"])))


def describe_choice(scored: Scored) -> str:
    s, e = scored.sampling, scored.ema
    text = f"{s['sampler']} {s['steps']} steps" + (f" eta {s['eta']:.2f}" if uses_eta(s["sampler"]) else "")
    return text + (f", sigma_rel {e['sigma_rel']:.3f}" if e["kind"] == "power" else f", ema rate {e['rate']:g}")


def judged_line(j: Judged) -> str:
    f = j.finalist
    return (f"final protocol, trial {f.trial_id}{' (baseline)' if f.baseline else ''}: " + "; ".join(
        f"{name} {s.mean:.4f} ± {s.std:.4f} ({describe_choice(s)})" for name, s in
        ((n, j.scored[n]) for n in POINTS if n in j.scored)) + f" -> {j.chosen}")
