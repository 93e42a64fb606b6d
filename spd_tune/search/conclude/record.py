"""Stage 8, record: what the conclusion writes, at the end and in one place. Optuna's closing writes (trials a
killed driver left RUNNING), best/champion.json and posthoc/front.json, then MLflow through one client and one
lookup of the search's runs: every trial's cost, the post-hoc evaluations, the final scores, the parent run's
summary, metrics, tags and files. ``close`` is the search's last step: the champion's registration, the parent
run's end and the mark that the search has finished.

Every MLflow call is guarded: a tracking server that is gone costs a warning, never the search's result, whose
files are in best/ whatever MLflow does.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Metric

from ..fit import spectrum_tags
from ..mlflow_runs import client_for
from ..optuna_plots import optuna_plots
from ..plan import Layout, mark_finished
from ..results import final_metric_name
from ..space import Space
from .champion import MODEL_FILE
from .final import POINTS, FinalResult
from .finalists import Finalists
from .posthoc import PosthocResult
from .report import Rendered
from .summary import FRONT_FILE, Summary

log = logging.getLogger("spd_tune.record")
INFO_FILE = "champion.json"
FIT_FILES = ("spectrum_fit.json", "spectrum.png")  # written when the search started, from a spectrum fit


class Runs:
    """The search's MLflow experiment, looked up once: its parent run and each trial's run."""

    def __init__(self, tracking_uri: str, experiment: str):
        self.client = client_for(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        runs = _every_run(self.client, exp.experiment_id) if exp is not None else []
        parent = [r for r in runs if r.data.tags.get("spd_tune.role") == "search"]
        self.parent = parent[0].info.run_id if parent else None
        self.trials = {r.data.tags["spd_tune.trial_id"]: r for r in runs
                       if r.data.tags.get("spd_tune.role") == "trial" and "spd_tune.trial_id" in r.data.tags}

    def trial(self, trial_id: str) -> str | None:
        run = self.trials.get(trial_id)
        return run.info.run_id if run is not None else None


@dataclass(frozen=True)
class Recorded:
    orphans: int  # Optuna trials and MLflow runs a killed driver had left open, closed now
    runs: Runs | None  # the MLflow lookup, for ``close``; None when the tracking server did not answer



def _every_run(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:  # page by page: a search can hold more runs than one page
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _guarded(what: str, fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # logging must never take the conclusion down
        log.warning("MLflow %s failed (%s: %s)", what, type(err).__name__, err)
        return None


def record(space: Space, layout: Layout, finalists: Finalists, posthoc: PosthocResult, final: FinalResult,
           summary: Summary, rendered: Rendered | None) -> Recorded:
    orphans = close_orphan_trials(space, layout.optuna_url)
    if summary.document is not None:
        Path(summary.document["best_dir"], INFO_FILE).write_text(json.dumps(summary.document, indent=2, default=str))
        tell_champion(space, layout.optuna_url, summary.document)
    if posthoc.ran:
        (layout.root / FRONT_FILE).parent.mkdir(parents=True, exist_ok=True)
        (layout.root / FRONT_FILE).write_text(json.dumps(list(posthoc.front), indent=2))
    runs = _guarded("lookup", Runs, layout.tracking_uri, space.train.name)
    if runs is None:
        return Recorded(orphans, None)
    known = {r.trial_id for r in finalists.records if r.trial_id}
    orphans += _guarded("reconciliation", close_orphan_runs, runs, known) or 0
    _guarded("costs", log_costs, runs, summary)
    if posthoc.ran:
        _guarded("post-hoc results", log_posthoc, runs, space.metric, posthoc, layout.root, rendered)
    if final.ran:
        _guarded("final scores", log_final_scores, runs, final_metric_name(space.metric), summary.document)
    _guarded("search summary", finish_search, runs, space, layout, summary, rendered)
    return Recorded(orphans, runs)


def close_orphan_trials(space: Space, optuna_url: str) -> int:
    """Optuna trials still RUNNING after the search were asked by a killed driver: FAIL, tagged as orphaned."""
    storage = optuna.storages.RDBStorage(optuna_url)
    study = optuna.load_study(study_name=space.train.name, storage=storage)
    study_id = storage.get_study_id_from_name(space.train.name)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        internal = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(internal, "spd_tune.orphaned", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


CHAMPION_ATTR = "spd_tune.champion"  # on the search's study: the answer, beside Optuna's own best trial


def tell_champion(space: Space, optuna_url: str, document: Mapping) -> None:
    """The champion on the search's study (``spd_tune.champion``: its trial, final mean and std, chosen EMA and
    sampler), so that optuna-dashboard shows the search's answer and not only the best rung score."""
    final = document.get("final") or {}
    optuna.load_study(study_name=space.train.name, storage=optuna_url).set_user_attr(CHAMPION_ATTR, {
        "trial_id": document["trial_id"], "params": dict(document["params"]), "metric": space.metric,
        "final_mean": final.get("mean"), "final_std": final.get("std"), "rung_score": document.get(space.metric),
        "ema": document.get("ema"), "sampling": document.get("sampling")})


def close_orphan_runs(runs: Runs, known_trial_ids: set) -> int:
    """Trial runs still RUNNING that the finished search does not hold were opened by a killed driver."""
    closed = 0
    for trial_id, run in runs.trials.items():
        if run.info.status == "RUNNING" and trial_id not in known_trial_ids:
            runs.client.set_tag(run.info.run_id, "spd_tune.orphaned", "true")
            runs.client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def log_costs(runs: Runs, summary: Summary) -> None:
    """Every trial's resource-hours on its own run (stopped and failed ones too): ``cost_hours`` and the tag
    ``spd_tune.cost_unit`` (GPU or CPU)."""
    for trial_id, cost in sorted(summary.costs.items()):
        run_id = runs.trial(trial_id)
        if run_id:
            runs.client.log_metric(run_id, "cost_hours", float(cost["hours"]))
            runs.client.set_tag(run_id, "spd_tune.cost_unit", summary.spent["unit"])


def log_posthoc(runs: Runs, metric: str, posthoc: PosthocResult, root: Path, rendered: Rendered | None) -> None:
    """Each finalist's post-hoc evaluations on its own run (``posthoc_<metric>`` with the post-hoc trial number as
    the step, and ``posthoc.json``), and the NFE front on the parent (``posthoc/front.json``, ``front.png``).
    Idempotent: a resumed stage logs only the steps not logged yet."""
    key, now = f"posthoc_{metric}", int(time.time() * 1000)
    for trial_id, rows in posthoc.studies.items():
        run_id = runs.trial(trial_id)
        if run_id is None:
            continue
        logged = {m.step for m in runs.client.get_metric_history(run_id, key)}
        runs.client.log_batch(run_id, metrics=[Metric(key, float(r["score"]), now, int(r["trial"])) for r in rows
                                               if int(r["trial"]) not in logged and "score" in r])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "posthoc.json").write_text(json.dumps(list(rows), indent=2))
            runs.client.log_artifact(run_id, str(Path(tmp) / "posthoc.json"))
    if runs.parent:
        plot = rendered.front_png if rendered is not None else None
        for path in filter(None, (root / FRONT_FILE, plot)):
            runs.client.log_artifact(runs.parent, str(path), artifact_path="posthoc")


def log_final_scores(runs: Runs, name: str, document: Mapping) -> None:
    """The final protocol's score on each finalist's run; after a post-hoc stage also its score at each of the
    two points it was judged at (``<name>_plain``, ``<name>_posthoc``)."""
    for row in document.get("finalists") or [document]:
        run_id = runs.trial(row["trial_id"])
        if run_id and name in row:
            runs.client.log_metric(run_id, name, float(row[name]))
            if row.get("final"):
                runs.client.log_metric(run_id, f"{name}_std", float(row["final"]["std"]))
            for point in (p for p in POINTS if p in row):
                runs.client.log_metric(run_id, f"{name}_{point}", float(row[point][name]))


def finish_search(runs: Runs, space: Space, layout: Layout, summary: Summary, rendered: Rendered | None) -> None:
    """The parent run gets the summary, the champion, the search's own metrics (rung trust, costs), the spectrum
    fit's tags, report.html, the fit's files and Optuna's plots; ``close`` ends it."""
    if runs.parent is None:
        return
    client, parent = runs.client, runs.parent
    for key, value in (spectrum_tags(space.fit) if space.fit else {}).items():
        client.set_tag(parent, key, value)
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(summary.metrics.items())])
    files = [rendered.html] if rendered is not None else []
    files += [layout.root / n for n in FIT_FILES if (layout.root / n).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "summary.txt").write_text("\n".join([summary.table, "", *summary.lines]) + "\n")
        written = [Path(tmp) / "summary.txt"]
        if summary.document is not None:
            (Path(tmp) / INFO_FILE).write_text(json.dumps({**summary.document, "trust": summary.trust,
                                                           "cost": summary.spent}, indent=2, default=str))
            written.append(Path(tmp) / INFO_FILE)
            client.set_tag(parent, "spd_tune.champion_trial", summary.document["trial_id"])
        if summary.front is not None:
            (Path(tmp) / "pareto_front.json").write_text(json.dumps(list(summary.front), indent=2, default=str))
            written.append(Path(tmp) / "pareto_front.json")
        for path in [*written, *files]:
            client.log_artifact(parent, str(path))
        for path in optuna_plots(layout.optuna_url, space.train.name, Path(tmp)):
            client.log_artifact(parent, str(path), artifact_path="optuna")


def close(space: Space, layout: Layout, summary: Summary, recorded: Recorded) -> str | None:
    """The search's last step, which a signal does not cut: register the champion (best/ as the model's
    ``champion`` version; champion.json then names it), end the parent run FINISHED and mark the search
    finished. Without a champion only the run ends, and ``--resume`` concludes again. Returns 'name@alias
    (version N)' or None."""
    runs, model = recorded.runs, None
    if summary.document is not None:
        document = dict(summary.document)
        best = Path(document["best_dir"])
        if runs is not None:
            tags = {k: json.dumps(document[k], sort_keys=True) for k in ("ema", "sampling") if k in document}
            model = _guarded("registration", register, runs, space, document["trial_id"], best, tags)
        document["model"] = model
        (best / INFO_FILE).write_text(json.dumps(document, indent=2, default=str))
    if runs is not None and runs.parent:
        _guarded("end of the search's run", runs.client.set_terminated, runs.parent, "FINISHED")
    if summary.document is not None:
        mark_finished(layout, {"champion": summary.document["trial_id"], "model": model,
                               "best_dir": summary.document["best_dir"]})
    return model


def register(runs: Runs, space: Space, trial_id: str, best: Path, tags: dict) -> str | None:
    """Log the champion's files on its trial's run and register them; returns 'name@alias (version N)' or None."""
    name = f"spd-tune-{space.train.data.name}"
    run_id = runs.trial(trial_id)
    if run_id is None:
        return None
    client = runs.client
    for path in (best / MODEL_FILE, best / "config.json", best / INFO_FILE):
        client.log_artifact(run_id, str(path), artifact_path="champion")
    client.set_tag(run_id, "spd_tune.champion", "true")
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="SPD UNet chosen by spd-tune: EMA weights + config")
    artifact_uri = runs.trials[trial_id].info.artifact_uri
    version = client.create_model_version(name, source=f"{artifact_uri}/champion", run_id=run_id,
                                          tags={"trial_id": trial_id, **tags})
    client.set_registered_model_alias(name, "champion", version.version)
    return f"{name}@champion (version {version.version})"
