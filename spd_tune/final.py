"""The final protocol: re-score the best checkpoints of the top trials with a larger evaluation.

Rung scores rank trials cheaply (few samples, few sampler steps); the champion is picked by the final
protocol (e.g. 50k samples at full T), run as one Ray task per finalist with one worker's resources.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .search_space import Space


def final_config(space: Space):
    f = space.search.final
    ev = space.train.eval
    return dataclasses.replace(space.train, eval=dataclasses.replace(
        ev, samples=f.samples, sampler=f.sampler or ev.sampler, sampler_steps=f.sampler_steps, eta=f.eta,
        seed=f.seed))


def _rescore(cfg_dict: dict, checkpoint) -> float:
    import torch

    from .checkpoint import load_checkpoint
    from .config import TrainConfig, from_dict
    from .evaluation import Evaluator

    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with checkpoint.as_directory() as directory:  # a ray.train.Checkpoint: local, NFS or a bucket
        state = load_checkpoint(Path(directory) / "checkpoint.pt", map_location=device)
    model, schedule = state.build(device=device)
    value, _, _ = Evaluator(cfg, device, 0, 1)(model, schedule)
    return value


def rescore(space: Space, checkpoints: list) -> list[float]:
    """Final scores of the given ray.train.Checkpoints, in parallel as far as the cluster allows."""
    import ray

    r = space.train.resources
    task = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.custom or None)(_rescore)
    cfg = final_config(space).to_dict()
    return ray.get([task.remote(cfg, checkpoint) for checkpoint in checkpoints])
