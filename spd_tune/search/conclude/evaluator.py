"""Stage 2, the evaluator: the one Ray task that scores a point of a finalist, injected into the stages that
score (posthoc, final), so that they run without Ray in their tests.

A point is an EMA width and a sampler (posthoc/evaluate.py); a job is a point with its number of samples and its
first seed. Every job is a Ray task with one worker's resources, and a batch of jobs runs in parallel as far as
the cluster allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import ray

from ...cluster import join_storage
from ...posthoc import PosthocPoint, RunFiles, evaluate_point
from ...train.averaging import SNAPSHOT_DIR
from ...train.config import TrainConfig
from ...train.driver import local_folder
from ...train.session import CHECKPOINT_FILE
from ...typed import from_dict
from ..interrupt import gather
from ..space import Space
from .finalists import Finalist


@dataclass(frozen=True)
class Job:
    point: PosthocPoint
    samples: int
    seed: int  # the first sample's seed; sample i uses seed + i


# [(finalist, job), ...] -> one result per job, in order: {score, nfe, samples, step, point, seconds}
Evaluate = Callable[[Sequence[tuple[Finalist, Job]]], list[dict]]


def _score(cfg_dict: dict, run_path: str, checkpoint, job: Job) -> dict:
    import torch  # in the task's worker process

    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    with ExitStack() as files:  # bucket storage: download only what this point reads
        ckpt = files.enter_context(local_folder(checkpoint)) / CHECKPOINT_FILE
        snapshots = None
        if job.point.sigma_rel is not None:
            snapshots = files.enter_context(local_folder(join_storage(run_path, SNAPSHOT_DIR)))
        result = evaluate_point(cfg, RunFiles(ckpt, snapshots), job.point, samples=job.samples, seed=job.seed,
                                device=device)
    return {**result, "seconds": time.monotonic() - started}  # the task's wall time, for the search's cost


def ray_evaluator(space: Space) -> Evaluate:
    """Jobs as Ray tasks with one worker's resources; a signal ends the wait (search/interrupt.py)."""
    r = space.train.resources
    task = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.custom or None)(_score)

    def evaluate(jobs: Sequence[tuple[Finalist, Job]]) -> list[dict]:
        configs: dict[str, dict] = {}
        refs = [task.remote(configs.setdefault(f.trial_id, f.cfg.to_dict()), f.run_path, f.checkpoint, job)
                for f, job in jobs]
        return gather(refs)
    return evaluate
