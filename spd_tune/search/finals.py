"""After the ASHA phase: each finalist's post-hoc study on its trained weights, then the final protocol at two
points per finalist, its best post-hoc point and its plain point, so that the post-hoc gain is measured.

Every evaluation is a Ray task with one worker's resources. A finalist's post-hoc study is asked and told in
fixed batches (search/posthoc.py). Final scores are kept in that study's storage too, so a driver killed part-way
through the stage resumes without repeating a finished evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass

import ray

from ..cluster import remove_folder
from ..core.samplers import SamplerConfig, uses_eta
from ..posthoc import PosthocPoint, RunFiles, ema_of, evaluate_point, sampling_of
from ..train.averaging import SNAPSHOT_DIR
from ..train.config import TrainConfig
from ..train.driver import local_folder
from ..train.session import CHECKPOINT_FILE
from ..typed import from_dict
from .interrupt import gather
from .posthoc import open_study, posthoc_study_name, run_study
from .results import seed_set_result
from .space import Space, posthoc_protocol

log = logging.getLogger("spd_tune.finals")
FINAL_ATTR = "spd_tune.final"  # a post-hoc study's user attribute: the final protocol's results, by point


@dataclass(frozen=True)
class Finalist:
    trial_id: str
    score: float  # its best rung score
    params: dict
    cfg: TrainConfig  # the trial's training config
    run_path: str  # its Train run folder: local, a shared mount or a bucket
    checkpoint: object  # its best ray.train.Checkpoint (the weights a point without a width uses)
    baseline: bool = False  # the space's first trial (its own config's point): a finalist whatever its rung score

    @property
    def power(self) -> bool:
        return self.cfg.ema.kind == "power"


def _evaluate(cfg_dict: dict, run_path: str, checkpoint, point: PosthocPoint, samples: int, seed: int) -> dict:
    import torch

    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    with ExitStack() as files:  # bucket storage: download only what this point reads
        ckpt = files.enter_context(local_folder(checkpoint)) / CHECKPOINT_FILE
        snapshots = None
        if point.sigma_rel is not None:
            snapshots = files.enter_context(local_folder(f"{run_path.rstrip('/')}/{SNAPSHOT_DIR}"))
        result = evaluate_point(cfg, RunFiles(ckpt, snapshots), point, samples=samples, seed=seed, device=device)
    return {**result, "seconds": time.monotonic() - started}  # the task's wall time, for the search's cost


def _task(space: Space):
    r = space.train.resources
    return ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.custom or None)(_evaluate)


def evaluator(space: Space, finalist: Finalist, samples: int, seed: int):
    """A batch of points of one finalist -> their results, evaluated in parallel as Ray tasks."""
    task, cfg = _task(space), finalist.cfg.to_dict()

    def evaluate(points):
        return gather([task.remote(cfg, finalist.run_path, finalist.checkpoint, p, samples, seed) for p in points])
    return evaluate


def evaluations(space: Space, finalist: Finalist, samples: int, jobs: list[tuple[PosthocPoint, int]]) -> dict:
    """(point, first seed) -> its result, for every job, evaluated in parallel as Ray tasks."""
    task, cfg = _task(space), finalist.cfg.to_dict()
    refs = [task.remote(cfg, finalist.run_path, finalist.checkpoint, p, samples, seed) for p, seed in jobs]
    return dict(zip(jobs, gather(refs)))


def run_posthoc(space: Space, optuna_url: str, finalists: list[Finalist]) -> dict[str, list[dict]]:
    """Each finalist's post-hoc study, run (or continued) to its number of evaluations: trial id -> its results."""
    ph = space.search.posthoc
    samples, seed = posthoc_protocol(space)
    out = {}
    for finalist in finalists:
        study = open_study(optuna_url, posthoc_study_name(space.train.name, finalist.trial_id), space.search.seed)
        out[finalist.trial_id] = run_study(study, ph, finalist.cfg.process.steps, finalist.power,
                                           evaluator(space, finalist, samples, seed))
        done = [r for r in out[finalist.trial_id] if math.isfinite(r.get("score", math.nan))]
        best = min(done, key=lambda r: r["score"], default=None)
        print(f"post-hoc trial {finalist.trial_id}: {len(out[finalist.trial_id])} evaluations" + (
            f", best {space.metric} {best['score']:.4f} at {describe_point(best['point'])} (NFE {best['nfe']})"
            if best else ", none finite"), flush=True)
    return out


def drop_snapshots(run_paths: dict[str, str], finalists: list[Finalist]) -> list[str]:
    """Once the post-hoc stage has ended: delete the EMA snapshots of every trial that is not a finalist (trial id
    -> its Train run folder); nothing will rebuild their weights. Returns the trial ids whose snapshots went."""
    keep = {f.trial_id for f in finalists}
    dropped = []
    for trial_id, run_path in sorted(run_paths.items()):
        if trial_id not in keep and remove_folder(f"{run_path.rstrip('/')}/{SNAPSHOT_DIR}"):
            dropped.append(trial_id)
    return dropped


def describe_point(point: dict) -> str:
    text = f"{point['sampler']} K={point['steps']}"
    if uses_eta(point["sampler"]):
        text += f" eta={point['eta']:.2f}"
    if point.get("sigma_rel") is not None:
        text += f" sigma_rel={point['sigma_rel']:.3f}"
    return text


def best_posthoc_point(rows: list[dict], nfe_budget: int | None) -> PosthocPoint | None:
    """The finalist's lowest-scoring post-hoc point (within the NFE budget, in multi-objective mode)."""
    usable = [r for r in rows if math.isfinite(r.get("score", math.nan))
              and (nfe_budget is None or r["nfe"] <= nfe_budget)]
    if not usable:
        return None
    p = min(usable, key=lambda r: (r["score"], r["trial"]))["point"]
    return PosthocPoint(SamplerConfig(p["sampler"], steps=p["steps"], eta=p["eta"]), sigma_rel=p["sigma_rel"])


def plain_point(space: Space) -> PosthocPoint:
    """The final protocol's own sampler with the trial's rung EMA: what the champion would be without the stage."""
    return PosthocPoint(space.search.final.sampler_config(space.train.eval.sampler))


def final_scores(space: Space, optuna_url: str, finalist: Finalist, points: dict[str, PosthocPoint]) -> dict:
    """The final protocol at each named point of one finalist, over its seed sets: name -> {score (the mean), std,
    values, nfe, point, ema, sampling}. A point scored before (a resumed driver) is read back from the post-hoc
    study instead of being evaluated again."""
    study = open_study(optuna_url, posthoc_study_name(space.train.name, finalist.trial_id), space.search.seed)
    stored = dict(study.user_attrs.get(FINAL_ATTR, {}))
    f = space.search.final
    sets = f.seed_sets()
    todo = {name: p for name, p in points.items()
            if stored.get(name, {}).get("point") != p.as_dict() or len(stored[name].get("values", ())) != len(sets)}
    unique = list(dict.fromkeys(todo.values()))  # the plain point can be the best post-hoc point too
    jobs = [(p, seed) for p in unique for seed in sets]
    results = evaluations(space, finalist, f.samples, jobs)
    for name, p in todo.items():
        runs = [results[(p, seed)] for seed in sets]
        summary = seed_set_result([r["score"] for r in runs])
        stored[name] = {**{k: v for k, v in runs[0].items() if k not in ("metric", "score", "seconds")},
                        "score": summary["mean"], "std": summary["std"], "values": summary["values"],
                        "seconds": sum(r.get("seconds", 0.0) for r in runs)}
    study.set_user_attr(FINAL_ATTR, stored)
    return {name: {**stored[name], "ema": ema_of(finalist.cfg, p.sigma_rel),
                   "sampling": sampling_of(p, stored[name]["nfe"])} for name, p in points.items()}


def run_finals(space: Space, optuna_url: str, finalists: list[Finalist],
               studies: dict[str, list[dict]]) -> list[dict]:
    """Each finalist at its plain and best post-hoc points: its results, best first by final score."""
    budget = space.search.multi_objective.nfe_budget if space.search.multi_objective.enabled else None
    out = []
    for finalist in finalists:
        points = {"plain": plain_point(space)}
        best = best_posthoc_point(studies.get(finalist.trial_id, []), budget)
        if best is not None:
            points["posthoc"] = best
        scores = final_scores(space, optuna_url, finalist, points)
        out.append({"finalist": finalist, **scores})
    return out


def chosen(entry: dict, budget: int | None) -> str:
    """Which of a finalist's scored points it is judged by: the lower final score, within the NFE budget if any
    point is."""
    names = [n for n in ("posthoc", "plain") if n in entry]
    within = [n for n in names if budget is None or entry[n]["nfe"] <= budget] or names

    def key(name: str) -> float:
        score = entry[name]["score"]
        return score if math.isfinite(score) else math.inf
    return min(within, key=key)


def with_choice(space: Space, entries: list[dict]) -> list[dict]:
    """The entries, each with its chosen point, best first by the chosen point's final score."""
    budget = space.search.multi_objective.nfe_budget if space.search.multi_objective.enabled else None
    out = [{**e, "chosen": chosen(e, budget)} for e in entries]
    return sorted(out, key=lambda e: (not math.isfinite(e[e["chosen"]]["score"]), e[e["chosen"]]["score"]))
