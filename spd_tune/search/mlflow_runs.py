"""The search's MLflow runs outside Tune's loop: the one way to a bounded client, and the parent run's state
across an interruption (closed as KILLED and tagged by a signal, running again on ``--resume``)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("spd_tune.mlflow")

# bounded client timeouts (seconds) and retries: a dead server must not stall the search
CLIENT_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
INTERRUPTED_TAG = "spd_tune.interrupted"  # on runs a signal closed as KILLED; a --resume opens them again
SEARCH_RUNS = "tags.`spd_tune.role` = 'search'"  # the filter that finds a search's parent run


def client_for(tracking_uri: str):
    """An MLflow client with bounded timeouts and retries (a user's own MLFLOW_HTTP_* settings win): every MLflow
    call of a search goes through one of these."""
    from mlflow.tracking import MlflowClient  # MLflow: imported once a search really starts, never on --dry-run

    for key, value in CLIENT_LIMITS.items():
        os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=tracking_uri)


def search_run(client, experiment: str):
    """The search's parent run, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=SEARCH_RUNS, max_results=1)
    return runs[0] if runs else None


def reopen_search_run(tracking_uri: str, experiment: str) -> None:
    """--resume: the parent run that an interrupted search closed runs again (its trials' runs reopen when they
    restart)."""
    try:
        client = client_for(tracking_uri)
        run = search_run(client, experiment)
        if run is not None and run.data.tags.get(INTERRUPTED_TAG) == "true":
            client.delete_tag(run.info.run_id, INTERRUPTED_TAG)
            client.update_run(run.info.run_id, status="RUNNING")
    except Exception as err:
        log.warning("MLflow: reopening the search's run failed (%s: %s)", type(err).__name__, err)


def mark_interrupted(tracking_uri: str, experiment: str) -> int:
    """An interrupted search's open runs (its parent, its running trials) end KILLED with the tag
    ``spd_tune.interrupted``, so that the MLflow UI shows no run as RUNNING that is not; ``--resume`` reopens
    them. Returns how many were closed."""
    try:
        client = client_for(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        for run in runs:
            client.set_tag(run.info.run_id, INTERRUPTED_TAG, "true")
            client.set_terminated(run.info.run_id, "KILLED")
        return len(runs)
    except Exception as err:
        log.warning("MLflow: marking the interrupted runs failed (%s: %s)", type(err).__name__, err)
        return 0
