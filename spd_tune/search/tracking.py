"""MLflow, written from one place: a Tune callback in the search driver.

One parent run per search, one child run per trial (tagged with the trial id and the parent), flat params
named as in the space, the metric curve per report with the training images as the step (one batched call
per report), each report's sample grid and the trial's config. Workers never talk to MLflow, so SQLite sees
a single writer. Every call is guarded: a tracking server that goes away degrades logging, never training.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from ..train.config import nimg
from ..train.session import GRID_FILE
from .console import say
from .mlflow_runs import INTERRUPTED_TAG, client_for
from .schedulers import read_gates
from .trials import stopped_early

log = logging.getLogger("spd_tune.tracking")

PAUSE_AFTER_FAILURE_S = 60.0  # after a failed call, skip MLflow for this long instead of waiting on it per result

EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment on the view this tag names
SKIP_METRICS = {"step", "start_step", "done", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s",
                "pid", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name"}


class MLflowTracker:
    """The parent/child run bookkeeping, reused across a driver restart through tags."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path, search_tags: dict):
        self.client = client_for(tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        # a tracking server stores artifacts where it was told to (--artifacts-destination); a local store here
        served = tracking_uri.startswith(("http://", "https://"))
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=None if served else Path(artifact_root).resolve().as_uri(),
            tags={EXPERIMENT_KIND: "custom_model_development"})  # MLflow 3's UI: model training, not GenAI
        self.parent_id = self._find_run({"spd_tune.role": "search"}) or self.client.create_run(
            self.experiment_id, run_name=experiment, tags={"spd_tune.role": "search", **search_tags}).info.run_id
        self._reopen(self.parent_id)
        self.children: dict[str, str] = {}

    def _reopen(self, run_id: str) -> None:
        """A run an interrupted search closed as interrupted runs again now that the search is resumed."""
        run = self.client.get_run(run_id)
        if run.data.tags.get(INTERRUPTED_TAG) == "true":
            self.client.delete_tag(run_id, INTERRUPTED_TAG)
            self.client.update_run(run_id, status="RUNNING")

    def _find_run(self, tags: dict) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def child(self, trial_id: str, params: dict, config: dict) -> str:
        if trial_id in self.children:
            return self.children[trial_id]
        run_id = self._find_run({"spd_tune.trial_id": trial_id})  # a resumed search reuses the run
        if run_id is not None:
            self._reopen(run_id)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_id}", tags={
                "spd_tune.trial_id": trial_id, "spd_tune.role": "trial", "mlflow.parentRunId": self.parent_id}
            ).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
                self.client.log_artifact(run_id, str(Path(tmp) / "config.json"))
        self.children[trial_id] = run_id
        return run_id

    def log_result(self, run_id: str, result: dict) -> None:
        from mlflow.entities import Metric

        step = nimg(result.get("kimg", 0))  # training images: the kimg axis, as an integer
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k not in SKIP_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(run_id, metrics=metrics)
        grid = Path(str(result.get("checkpoint_path") or "")) / GRID_FILE
        if result.get("checkpoint_path") and grid.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                named = Path(tmp) / f"samples_{step:09d}.png"
                named.write_bytes(grid.read_bytes())
                self.client.log_artifact(run_id, str(named), artifact_path="samples")

    def log_gate(self, rung: str, gate: dict, step: int) -> None:
        from mlflow.entities import Metric

        now, name = int(time.time() * 1000), f"gate_kimg{rung}"
        metrics = [Metric(f"{name}_pairs", float(gate["pairs"]), now, step),
                   Metric(f"{name}_open", float(gate["open"]), now, step)]
        if gate.get("lower") is not None:
            metrics.append(Metric(name, float(gate["lower"]), now, step))
        self.client.log_batch(self.parent_id, metrics=metrics)

    def finish(self, run_id: str, status: str, tags: dict | None = None) -> None:
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status)


class MLflowCallback(Callback):
    """Tune callback around MLflowTracker; it survives Tuner.restore (pickled with the experiment)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str, max_kimg: float, param_names: list,
                 gate_file: str | None = None):
        self.tracking_uri, self.experiment, self.artifact_root = tracking_uri, experiment, artifact_root
        self.max_kimg, self.param_names = max_kimg, list(param_names)
        self.gate_file = gate_file
        self.tracker: MLflowTracker | None = None
        self.paused_until, self.skipped = 0.0, 0
        self.gates_seen: dict = {}
        self.reports = 0

    def __getstate__(self):
        return {**self.__dict__, "tracker": None, "paused_until": 0.0, "skipped": 0, "gates_seen": {}}

    def _log_gates(self) -> None:
        """The stopping gate of every rung on the parent run (``gate_kimg<rung>``: the lower bound of its rank
        agreement; ``_pairs``; ``_open`` 0/1) when it changes, and one console line when a gate opens or closes."""
        state = read_gates(self.gate_file) if self.gate_file else None
        if not state:
            return
        for rung, gate in state["gates"].items():
            seen = self.gates_seen.get(rung)
            if seen == gate:
                continue
            if (seen or {}).get("open", False) != gate["open"]:
                say(gate_line(rung, gate, state["threshold"]))
            self.gates_seen[rung] = gate
            self._guard("gate", self.tracker.log_gate, rung, gate, self.reports)

    def _guard(self, what: str, fn, *args):
        """Run one MLflow call; on failure log it and pause MLflow for a while, so a dead tracking server costs
        the search one timeout per pause, not one per result."""
        if time.monotonic() < self.paused_until:
            self.skipped += 1
            return None
        try:
            if self.tracker is None:
                self.tracker = MLflowTracker(self.tracking_uri, self.experiment, Path(self.artifact_root),
                                             {"spd_tune.search": self.experiment})
            result = fn(*args)
        except Exception as err:  # logging must never take the search down
            self.paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
            log.warning("MLflow %s failed (%s: %s); the search goes on, MLflow paused for %.0f s", what,
                        type(err).__name__, err, PAUSE_AFTER_FAILURE_S)
            return None
        if self.skipped:
            log.warning("MLflow is back; %d logging call(s) were skipped while it was unreachable", self.skipped)
            self.skipped = 0
        return result

    def _child(self, trial) -> str | None:
        params = {k: trial.config.get(k) for k in self.param_names}
        return self._guard("trial start", lambda: self.tracker.child(trial.trial_id, params, trial.config))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._child(trial)
        self.reports += 1
        if run_id:
            self._guard("metrics", self.tracker.log_result, run_id, result)
        if self.tracker is not None:
            self._log_gates()

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._child(trial)
        kimg = float((trial.last_result or {}).get("kimg", 0))
        stopped = stopped_early(kimg, self.max_kimg)
        if run_id and (trial.last_result or {}).get("diverged"):
            self._guard("trial end", self.tracker.finish, run_id, "FAILED",
                        {"spd_tune.diverged": "true", "spd_tune.kimg": f"{kimg:g}"})
            return
        if run_id:
            # FINISHED either way: MLflow's KILLED reads as a crash or a Ctrl-C; the tag says it was stopped early
            self._guard("trial end", self.tracker.finish, run_id, "FINISHED",
                        {"spd_tune.stopped_early": str(stopped).lower(), "spd_tune.kimg": f"{kimg:g}"})

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._child(trial)
        if run_id:
            self._guard("trial error", self.tracker.finish, run_id, "FAILED", {"spd_tune.error": "true"})


def gate_line(rung: str, gate: dict, threshold: float) -> str:
    """The console's line when a rung's gate opens or closes."""
    measured = (f"rho {gate['rho']:+.2f}, lower 95% bound {gate['lower']:+.2f} vs threshold {threshold:+.2f}, "
                f"{gate['pairs']} pairs against {gate['against']:g} kimg" if gate.get("lower") is not None
                else f"{gate['pairs']} pairs, not measured yet")
    if gate["open"]:
        return f"[spd-tune] gate at {rung} kimg open ({measured}): this rung may now stop trials"
    return f"[spd-tune] gate at {rung} kimg closed ({measured}): this rung stops no trial"
