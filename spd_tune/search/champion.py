"""The search's winner: the final protocol re-scores the top trials, the best is copied to ``best/``, slimmed to
weights for users and registered in MLflow.

Rung scores rank trials cheaply (few samples, few sampler steps); the champion is picked by the final protocol
(e.g. 50k samples at full T), run as one Ray task per finalist with one worker's resources. The registered model
is ``spd-tune-<dataset>`` with the alias ``champion``; its files are ``model.pt`` (EMA weights and the configs,
loadable with ``weights_only=True`` through ``spd_tune.checkpoint.load_checkpoint``) and ``config.json``. No
pickled code is stored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import ray

from ..core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..train.config import TrainConfig
from ..train.driver import best_checkpoint
from ..train.evaluation import Evaluator
from ..train.session import CHECKPOINT_FILE
from ..typed import from_dict
from .results import final_metric_name, ranked_trials, trial_run_name
from .space import Space
from .tracking import client_for, log_final_scores

log = logging.getLogger("spd_tune.champion")
MODEL_FILE = "model.pt"
INFO_FILE = "champion.json"


def final_config(space: Space):
    f = space.search.final
    ev = space.train.eval
    return dataclasses.replace(space.train, eval=dataclasses.replace(
        ev, samples=f.samples, sampler=f.sampler or ev.sampler, sampler_steps=f.sampler_steps, eta=f.eta,
        seed=f.seed))


def _rescore(cfg_dict: dict, checkpoint) -> float:
    import torch

    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with checkpoint.as_directory() as directory:  # a ray.train.Checkpoint: local, NFS or a bucket
        state = load_checkpoint(Path(directory) / CHECKPOINT_FILE, map_location=device)
    model, schedule = state.build(device=device)
    value, _, _ = Evaluator(cfg, device, 0, 1)(model, schedule)
    return value


def rescore(space: Space, checkpoints: list) -> list[float]:
    """Final scores of the given ray.train.Checkpoints, in parallel as far as the cluster allows."""
    r = space.train.resources
    task = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.custom or None)(_rescore)
    cfg = final_config(space).to_dict()
    return ray.get([task.remote(cfg, checkpoint) for checkpoint in checkpoints])


def choose_champion(space: Space, layout, results) -> dict | None:
    """Pick the champion (by the final protocol when configured), copy its best checkpoint to <root>/best/
    and register it in MLflow."""
    ranked = ranked_trials(space, results)
    finalists, checkpoints = [], {}
    for score, result in ranked[: max(1, space.search.final.top_k)]:
        trial_id = result.metrics["trial_id"]
        checkpoint = best_checkpoint(layout.under_storage(trial_run_name(trial_id)), space.metric)
        if checkpoint is not None:
            checkpoints[trial_id] = checkpoint  # local or in a bucket: read through its own filesystem
            finalists.append({"trial_id": trial_id, space.metric: score, "checkpoint": checkpoint.path,
                              "params": {k: result.config[k] for k in space.search.params}})
    if not finalists:
        return None
    if space.search.final.top_k:
        final_name = final_metric_name(space.metric)
        for finalist, value in zip(finalists, rescore(space, [checkpoints[f["trial_id"]] for f in finalists])):
            finalist[final_name] = value
        log_final_scores(layout.tracking_uri, space.train.name, final_name, finalists)
        finalists.sort(key=lambda f: f[final_name] if math.isfinite(f[final_name]) else math.inf)
    info = finalists[0]
    target = layout.root / "best"
    if target.exists():
        shutil.rmtree(target)
    checkpoints[info["trial_id"]].to_directory(str(target))
    weights = export_weights(target)
    info = {**info, "best_dir": str(target), "finalists": finalists if len(finalists) > 1 else None}
    (target / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    info["model"] = register(space, layout, info["trial_id"], weights, target / INFO_FILE)
    return info


def export_weights(best_dir: Path) -> Path:
    """best/checkpoint.pt (full training state) -> best/model.pt (EMA weights + configs) and best/config.json."""
    state = load_checkpoint(Path(best_dir) / CHECKPOINT_FILE)
    slim = Checkpoint(unet=state.unet, process=state.process, model=state.ema or state.model,
                      extra={"step": state.extra.get("step"), "kimg": state.extra.get("kimg"),
                             "metric": state.extra.get("metric")})
    path = save_checkpoint(Path(best_dir) / MODEL_FILE, slim)
    (Path(best_dir) / "config.json").write_text(json.dumps(state.extra.get("config", {}), indent=2, sort_keys=True))
    return path


def register(space, layout, trial_id: str, weights: Path, info_file: Path) -> str | None:
    """Log the champion's files on its trial's run and register them; returns 'name@alias' or None."""
    name = f"spd-tune-{space.train.data.name}"
    try:
        client = client_for(layout.tracking_uri)
        experiment = client.get_experiment_by_name(space.train.name)
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`spd_tune.trial_id` = '{trial_id}'", max_results=1)
        if not runs:
            return None
        run = runs[0]
        for path in (weights, weights.parent / "config.json", info_file):
            client.log_artifact(run.info.run_id, str(path), artifact_path="champion")
        client.set_tag(run.info.run_id, "spd_tune.champion", "true")
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description="SPD UNet chosen by spd-tune: EMA weights + config")
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/champion", run_id=run.info.run_id,
                                              tags={"trial_id": trial_id})
        client.set_registered_model_alias(name, "champion", version.version)
        return f"{name}@champion (version {version.version})"
    except Exception as err:  # the files are in best/ whatever the registry does
        log.warning("registering the champion in MLflow failed (%s: %s)", type(err).__name__, err)
        return None
