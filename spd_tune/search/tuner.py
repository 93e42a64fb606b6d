"""Ray Tune over Ray Train: one trial is one Train run; OptunaSearch proposes, ASHA stops poor trials early.

The searcher's Optuna trials carry the Tune trial id, and so do the Train run (``train-<trial id>``) and the MLflow
child run: the three records of a trial join on it, and a resumed search finds its own.
"""

from __future__ import annotations

import math
import sys

import optuna
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..errors import ConfigError, first_line
from ..train.config import nimg, stopped_early
from ..train.driver import ReportQueue, build_trainer, fit_reporting, trial_callbacks
from .costs import Budget
from .interrupt import active
from .plan import Layout
from .results import diverged, trial_run_name
from .schedulers import PersistentASHA
from .space import Space
from .tracking import MLflowCallback, close_orphan_runs

ASHA_STATE_FILE = "asha_state.json"  # beside the Optuna study: the rungs a resumed search stops trials on


class StopOnSignal(Callback):
    """Passes a SIGINT/SIGTERM the search received (search/interrupt.py) on to Tune's own graceful stop, from
    inside Tune's loop, where Tune's handler is installed. Stateless: it is pickled with the experiment."""

    def on_step_end(self, iteration, trials, **info):
        interrupts = active()
        if interrupts is not None:
            interrupts.forward_to_tune()


def trial_driver(params: dict, space: Space, storage_path: str) -> None:
    """One trial: build its training config and run it as a Ray Train job, passing its reports to Tune from this
    thread (train.driver.ReportQueue says why not through Ray's TuneReportCallback)."""
    trial_id = tune.get_context().get_trial_id()
    cfg = space.trial_config({name: params[name] for name in space.search.params})
    reports = ReportQueue()
    trainer = build_trainer(cfg, space.metric, name=trial_run_name(trial_id), storage_path=storage_path,
                            callbacks=trial_callbacks(reports))
    result = fit_reporting(trainer, reports, tune.report)
    if result.error:
        raise result.error


def make_searcher(space: Space, layout: Layout) -> OptunaSearch:
    class PruningOptunaSearch(OptunaSearch):
        """Intermediate values keyed by training images (stable across restores), and ASHA stops as PRUNED."""

        def suggest(self, trial_id: str):
            spent = self.__dict__.setdefault("_spd_spent", {})  # in the searcher's saved state: kept on resume
            if not budget.allows_another(spent):
                if not self.__dict__.get("_spd_budget_said"):
                    self._spd_budget_said = True
                    print(f"[spd-tune] budget: {budget.spent_hours(spent):.4g} of {budget.hours:g} {budget.unit}-hours "
                          f"spent, one more trial would take about {budget.projected_trial_hours(spent):.4g}: no new "
                          "trials", flush=True)
                return Searcher.FINISHED
            suggestion = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:  # Tune, Optuna and MLflow records join on the Tune trial id
                ot_trial.set_user_attr("spd_tune.trial_id", trial_id)
            return suggestion

        def _spend(self, trial_id: str, result: dict | None) -> None:
            if result and "time_total_s" in result:
                spent = self.__dict__.setdefault("_spd_spent", {})
                spent[trial_id] = (float(result["time_total_s"]), float(result.get("kimg") or 0.0))

        def _closed(self, trial_id: str) -> bool:
            """The trial's Optuna record was finished by an earlier driver (e.g. one that closed it as an
            orphan): Tune and MLflow still get its results, Optuna cannot take them."""
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return False
            state = ot_trial.storage.get_trial(ot_trial._trial_id).state
            if state.is_finished():
                self._completed_trials.add(trial_id)
                print(f"[spd-tune] trial {trial_id}: its Optuna trial was already {state.name} (closed by an "
                      "earlier run); its results go to Tune and MLflow only", file=sys.stderr, flush=True)
                return True
            return False

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            self._spend(trial_id, result)
            if isinstance(self.metric, list):  # Optuna keeps no intermediate values for several objectives
                return
            if not self._closed(trial_id) and trial_id not in self._completed_trials and trial_id in self._ot_trials:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            value = result.get(self.metric)
            step = nimg(result.get("kimg", 0))
            ot_trial = self._ot_trials[trial_id]
            if value is not None and math.isfinite(value) and step not in ot_trial.storage.get_trial(
                    ot_trial._trial_id).intermediate_values:
                ot_trial.report(value, step)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self._spend(trial_id, result)
            if self._closed(trial_id):
                return
            if diverged(result) and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._completed_trials.add(trial_id)
                ot_trial = self._ot_trials[trial_id]
                self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "spd_tune.diverged", True)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                return
            stopped = result is not None and stopped_early(result.get("kimg", 0), space.max_kimg)
            if stopped and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._completed_trials.add(trial_id)
                try:
                    self._report(trial_id, result)  # Tune passes the stopping result here only
                    self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                except Exception as err:  # e.g. already finished by a driver that was killed after it
                    print(f"[spd-tune] Optuna trial of {trial_id} not updated: {err}", file=sys.stderr)
                return
            super().on_trial_complete(trial_id, result, error)

    budget = Budget(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [space.default_point()] if space.search.enqueue_defaults else None
    multi = space.search.multi_objective.enabled
    return PruningOptunaSearch(
        metric=[space.metric, "nfe"] if multi else space.metric, mode=["min", "min"] if multi else "min",
        study_name=space.train.name, points_to_evaluate=points,
        sampler=optuna.samplers.TPESampler(seed=space.search.seed, n_startup_trials=space.search.startup_trials),
        storage=optuna.storages.RDBStorage(layout.optuna_url))


def build_tuner(space: Space, layout: Layout, max_concurrent: int, resume: bool, driver: dict[str, float]):
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, space=space, storage_path=layout.storage.path), driver)
    if resume:  # main() has checked that there is one
        try:
            return tune.Tuner.restore(layout.experiment_dir, trainable=trainable,
                                      resume_unfinished=True, resume_errored=True)
        except Exception as err:  # e.g. saved by a version whose classes have changed
            raise ConfigError(f"--resume: the search saved under {layout.experiment_dir} cannot be continued "
                              f"({type(err).__name__}: {first_line(err)}); start a new search with another --output "
                              "(nothing was changed)") from None
    asha = space.search.asha
    multi = space.search.multi_objective.enabled
    if multi:
        # Optuna cannot prune multi-objective trials and ASHA ranks by one metric only, so every trial runs
        # to max_kimg: the front compares fully trained models
        scheduler = FIFOScheduler()
    else:
        scheduler = PersistentASHA(layout.root / ASHA_STATE_FILE, time_attr="kimg", max_t=space.max_kimg,
                                   grace_period=asha.grace_kimg, reduction_factor=asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space={name: spec.tune_domain() for name, spec in space.search.params.items()},
        tune_config=tune.TuneConfig(
            # in multi-objective mode the searcher holds both objectives; Tune would overwrite them with one
            metric=None if multi else space.metric, mode=None if multi else "min",
            num_samples=space.search.trials, search_alg=make_searcher(space, layout),
            scheduler=scheduler,
            max_concurrent_trials=max_concurrent, time_budget_s=space.search.time_budget_s),
        run_config=tune.RunConfig(
            name=space.train.name, storage_path=layout.under_storage("tune"),
            callbacks=[MLflowCallback(layout.tracking_uri, space.train.name, str(layout.root / "mlartifacts"),
                                      space.max_kimg, list(space.search.params)), StopOnSignal()],
            failure_config=tune.FailureConfig(max_failures=1)),
    )


def reconcile(space: Space, layout: Layout, results) -> int:
    """After the search, close what a killed driver left open: Optuna trials still RUNNING become FAIL and
    MLflow runs of trials this search does not hold are marked KILLED, each tagged as orphaned. Returns how many."""
    orphans = 0
    study = optuna.load_study(study_name=space.train.name, storage=layout.optuna_url)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "spd_tune.orphaned", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        orphans += 1
    known = {r.metrics.get("trial_id") for r in results if r.metrics}
    return orphans + close_orphan_runs(layout.tracking_uri, space.train.name, known)
