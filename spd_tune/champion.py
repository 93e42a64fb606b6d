"""The search's winner: slim weights for users, and its entry in the MLflow Model Registry.

The registered model is ``spd-tune-<dataset>`` with the alias ``champion``; its files are ``model.pt`` (EMA
weights and the configs, loadable with ``weights_only=True`` through ``spd_tune.checkpoint.load_checkpoint``)
and ``config.json``. No pickled code is stored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger("spd_tune.champion")


def export_weights(best_dir: Path) -> Path:
    """best/checkpoint.pt (full training state) -> best/model.pt (EMA weights + configs) and best/config.json."""
    state = load_checkpoint(Path(best_dir) / "checkpoint.pt")
    slim = Checkpoint(unet=state.unet, process=state.process, model=state.ema or state.model,
                      extra={"step": state.extra.get("step"), "kimg": state.extra.get("kimg"),
                             "metric": state.extra.get("metric")})
    path = save_checkpoint(Path(best_dir) / "model.pt", slim)
    (Path(best_dir) / "config.json").write_text(json.dumps(state.extra.get("config", {}), indent=2, sort_keys=True))
    return path


def register(space, layout, trial_id: str, weights: Path, info_file: Path) -> str | None:
    """Log the champion's files on its trial's run and register them; returns 'name@alias' or None."""
    from mlflow.tracking import MlflowClient

    name = f"spd-tune-{space.train.data.name}"
    try:
        client = MlflowClient(tracking_uri=layout.tracking_uri)
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
