"""A real tiny search end to end: Ray Tune over Ray Train, a real Optuna SQLite study, a real MLflow store."""

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient

from spd_tune.checkpoint import load_checkpoint
from spd_tune.search import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TRIALS = 5
TINY = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.64", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.16", "search.asha.max_kimg=0.64", f"search.trials={TRIALS}",
]


@pytest.fixture(scope="module")
def finished_search(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    sets = [arg for item in TINY for arg in ("--set", item)]
    sets += ["--set", f"train.data.cache_dir={out / 'cache'}"]
    assert main(["demo", "--output", str(out), *sets]) == 0
    return out / "demo"


def test_every_trial_is_in_tune_optuna_and_mlflow(finished_search):
    root = finished_search
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert study.trials[0].params == {"m": 2.69, "T": 200, "lr": 0.002}  # the config's own point goes first
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was stopped early"
    assert all(t.intermediate_values for t in pruned)  # pruned with their intermediate values, not as COMPLETE
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("spd_tune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("spd_tune.role") == "trial"]
    assert len(parents) == 1 and len(children) == TRIALS
    assert parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert {"summary.txt", "champion.json", "optuna"} <= {a.path for a in client.list_artifacts(parent_id)}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert set(child.data.params) == {"m", "T", "lr"}
        curve = client.get_metric_history(child.info.run_id, "proxy_fd64")
        assert curve and all(math.isfinite(m.value) for m in curve)
        assert [m.step for m in curve] == sorted(m.step for m in curve) and curve[0].step == 160  # kimg axis
        assert any(a.path == "samples" for a in client.list_artifacts(child.info.run_id))
    stopped = [c for c in children if c.data.tags.get("spd_tune.stopped_early") == "true"]
    assert len(stopped) == len(pruned)


def test_champion_is_copied_loadable_and_registered(finished_search):
    best = finished_search / "best"
    state = load_checkpoint(best / "model.pt")
    model, schedule = state.build()
    assert state.extra["kimg"] > 0 and schedule.steps == state.process.steps
    assert "optimizer" not in state.extra  # slim weights for users
    client = MlflowClient(f"sqlite:///{finished_search / 'mlflow.db'}")
    version = client.get_model_version_by_alias("spd-tune-demo", "champion")
    files = {a.path for a in client.list_artifacts(version.run_id, "champion")}
    assert {"champion/model.pt", "champion/config.json"} <= files
