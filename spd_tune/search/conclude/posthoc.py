"""Stage 3, post-hoc (``search.posthoc``): each finalist's seeded study over its EMA width and sampler, scored on
its trained weights (search/posthoc.py asks and tells it), then the NFE front of every evaluation.

A study's results stay in the search's Optuna storage as they come, so a resumed driver repeats no evaluation.
Once every study has ended, the EMA snapshots of the trials that are not finalists are deleted: nothing will
rebuild their weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...cluster import join_storage, remove_folder
from ...core.samplers import uses_eta
from ...train.averaging import SNAPSHOT_DIR
from ..front import nondominated, posthoc_points
from ..posthoc import open_study, posthoc_study_name, run_study
from ..space import Space, posthoc_protocol
from .evaluator import Evaluate, Job
from .finalists import Finalist, Finalists

Say = Callable[[str], None]  # a line for the console; only conclude() prints


@dataclass(frozen=True)
class PosthocResult:
    studies: Mapping[str, tuple[dict, ...]] = field(default_factory=dict)  # trial id -> its evaluations in order
    points: tuple[dict, ...] = ()  # every evaluation as {trial_id, posthoc_trial, <metric>, nfe, point}
    front: tuple[dict, ...] = ()  # the points no other beats in both score and NFE, by NFE
    dropped: tuple[str, ...] = ()  # the trials whose EMA snapshots were deleted

    @property
    def ran(self) -> bool:
        return bool(self.studies)

    def rows(self, trial_id: str) -> tuple[dict, ...]:
        return self.studies.get(trial_id, ())


NOT_RUN = PosthocResult()


def run(space: Space, optuna_url: str, finalists: Finalists, evaluate: Evaluate, say: Say) -> PosthocResult:
    """Every finalist's study, run (or continued) to ``search.posthoc.evaluations``; NOT_RUN when disabled."""
    if not (space.search.posthoc.enabled and finalists.chosen):
        return NOT_RUN
    metric = space.metric
    studies = {}
    for index, finalist in enumerate(finalists.chosen):
        studies[finalist.trial_id] = tuple(_study(space, optuna_url, finalist, index, evaluate))
        say(_study_line(space, finalist.trial_id, studies[finalist.trial_id]))
    dropped = drop_snapshots(finalists.run_paths, finalists.chosen)
    if dropped:
        say(f"deleted the EMA snapshots of {len(dropped)} trial(s) that are not finalists")
    points = posthoc_points(studies, metric)
    front = nondominated(points, metric)
    say(f"post-hoc front ({metric} vs NFE): " + ", ".join(
        f"{p['trial_id']} ({p[metric]:.4f}, {p['nfe']} NFE)" for p in front))
    return PosthocResult(studies, tuple(points), tuple(front), tuple(dropped))


def _study(space: Space, optuna_url: str, finalist: Finalist, index: int, evaluate: Evaluate) -> list[dict]:
    samples, seed = posthoc_protocol(space)
    # each finalist draws its own points: the search's seed, offset by the finalist's place in the ranking
    study = open_study(optuna_url, posthoc_study_name(space.train.name, finalist.trial_id),
                       space.search.seed + 1 + index, space.metric)
    return run_study(study, space.search.posthoc, finalist.cfg.process.steps, finalist.power,
                     lambda points: evaluate([(finalist, Job(p, samples, seed)) for p in points]))


def _study_line(space: Space, trial_id: str, rows: tuple[dict, ...]) -> str:
    done = [r for r in rows if math.isfinite(r.get("score", math.nan))]
    best = min(done, key=lambda r: r["score"], default=None)
    return f"post-hoc trial {trial_id}: {len(rows)} evaluations" + (
        f", best {space.metric} {best['score']:.4f} at {describe_point(best['point'])} (NFE {best['nfe']})"
        if best else ", none finite")


def drop_snapshots(run_paths: Mapping[str, str], finalists: tuple[Finalist, ...]) -> list[str]:
    """Delete the EMA snapshots of every trial that is not a finalist (trial id -> its Train run folder).
    Returns the trial ids whose snapshots went."""
    keep = {f.trial_id for f in finalists}
    dropped = []
    for trial_id, run_path in sorted(run_paths.items()):
        if trial_id not in keep and remove_folder(join_storage(run_path, SNAPSHOT_DIR)):
            dropped.append(trial_id)
    return dropped


def describe_point(point: Mapping) -> str:
    text = f"{point['sampler']} K={point['steps']}"
    if uses_eta(point["sampler"]):
        text += f" eta={point['eta']:.2f}"
    if point.get("sigma_rel") is not None:
        text += f" sigma_rel={point['sigma_rel']:.3f}"
    return text
