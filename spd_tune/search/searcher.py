"""The search's proposals: a small Ray Tune Searcher over an Optuna study's public ask/tell, and the budget as a
wrapper around it (as Ray's ConcurrencyLimiter wraps a searcher).

Every Optuna trial carries its Tune trial id (user attribute ``spd_tune.trial_id``), as do its Train run
(``train-<trial id>``) and its MLflow run: the three records of a trial join on it. Intermediate values are
keyed by training images (nimg), which stay the same across restores.

What a trial's end is told to Optuna:
- it reached ``max_kimg``: COMPLETE with its last score (both objectives in multi-objective mode);
- the scheduler stopped it (Tune tells the searcher only of its scheduler's stops): PRUNED, with its intermediate
  values;
- a non-finite loss: FAIL, ``spd_tune.diverged``; an error after its retries: FAIL, ``spd_tune.error``;
- ended while still PENDING (the search itself ended): FAIL, ``spd_tune.ended``. TPE ignores FAIL trials, so an
  end that says nothing about the configuration does not count against its region;
- a signal: nothing (the trial stays RUNNING and ``--resume`` continues it).
"""

from __future__ import annotations

import math
import pickle
import sys
import warnings

import optuna
from ray.tune.search import Searcher

from ..train.config import nimg
from .console import say
from .costs import Budget
from .space import ParamSpec, Space
from .trials import diverged, stopped_early

TRIAL_ID_ATTR = "spd_tune.trial_id"


def optuna_distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(spec.choices))
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
    return optuna.distributions.FloatDistribution(float(spec.low), float(spec.high), log=spec.log)


class _PickledState(Searcher):
    """Tune saves a searcher with save() and restores it with restore(): both through get_state/set_state."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class StudySearcher(_PickledState):
    """Proposals from an Optuna study (seeded TPE, the space's own point first), told what each trial became."""

    def __init__(self, space: Space, optuna_url: str) -> None:
        multi = space.search.multi_objective.enabled
        super().__init__(metric=space.metric, mode="min")
        self.metrics = [space.metric, "nfe"] if multi else [space.metric]
        self.study_name, self.optuna_url = space.train.name, optuna_url
        self.max_kimg = space.max_kimg
        self.distributions = {name: optuna_distribution(spec) for name, spec in space.search.params.items()}
        self.first_point = space.default_point() if space.search.enqueue_defaults else None
        self.sampler = optuna.samplers.TPESampler(seed=space.search.seed, n_startup_trials=space.search.startup_trials)
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.told: set[str] = set()
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.RDBStorage | None = None

    # --- the study, opened lazily in the driver (never pickled)
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None, "_storage": None}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._storage = optuna.storages.RDBStorage(self.optuna_url)
            self._study = optuna.create_study(study_name=self.study_name, storage=self._storage,
                                              directions=["minimize"] * len(self.metrics), sampler=self.sampler,
                                              load_if_exists=True)
            if self.first_point is not None and not self._study.get_trials(deepcopy=False):
                self._study.enqueue_trial(self.first_point)
            if self._study.metric_names != list(self.metrics):  # optuna-dashboard names the objectives
                with warnings.catch_warnings():  # set_metric_names is marked experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._study.set_metric_names(list(self.metrics))
        return self._study

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        self.study  # opens the study and its storage
        return self._storage

    def _internal_id(self, trial_id: str) -> int:
        study_id = self.storage.get_study_id_from_name(self.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, self.numbers[trial_id])

    # --- Tune's Searcher interface
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is ours: Tune's metric, mode and param_space add nothing

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.numbers:  # asked again after a restore: the same point
            return dict(self.study.trials[self.numbers[trial_id]].params)
        trial = self.study.ask(self.distributions)
        trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        self.numbers[trial_id] = trial.number
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if len(self.metrics) > 1 or not self._open(trial_id):  # Optuna keeps no intermediate values for several
            return
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not self._open(trial_id):
            return
        self.told.add(trial_id)
        number = self.numbers[trial_id]
        fail = optuna.trial.TrialState.FAIL
        if diverged(result):
            self._set_attr(trial_id, "spd_tune.diverged", True)
            self.study.tell(number, state=fail)
        elif error or result is None:
            self._set_attr(trial_id, "spd_tune.error" if error else "spd_tune.ended", True)
            self.study.tell(number, state=fail)
        elif stopped_early(result.get("kimg", 0), self.max_kimg):
            if len(self.metrics) == 1:
                self._report(trial_id, result)
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            values = [result.get(m) for m in self.metrics]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                self.study.tell(number, values if len(values) > 1 else values[0])
            else:
                self.study.tell(number, state=fail)

    def _open(self, trial_id: str) -> bool:
        """The trial is ours and its Optuna trial can still take results. One closed by an earlier run (e.g. as an
        orphan) is said once and left alone: Tune and MLflow still get its results."""
        if trial_id not in self.numbers or trial_id in self.told:
            return False
        state = self._storage_trial(trial_id).state
        if state.is_finished():
            self.told.add(trial_id)
            print(f"[spd-tune] trial {trial_id}: its Optuna trial was already {state.name} (closed by an earlier "
                  "run); its results go to Tune and MLflow only", file=sys.stderr, flush=True)
            return False
        return True

    def _storage_trial(self, trial_id: str) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._internal_id(trial_id))

    def _report(self, trial_id: str, result: dict) -> None:
        value, step = result.get(self.metric), nimg(result.get("kimg", 0))
        if isinstance(value, (int, float)) and math.isfinite(value) \
                and step not in self._storage_trial(trial_id).intermediate_values:
            self.storage.set_trial_intermediate_value(self._internal_id(trial_id), step, float(value))

    def _set_attr(self, trial_id: str, key: str, value) -> None:
        self.storage.set_trial_user_attr(self._internal_id(trial_id), key, value)

    def get_state(self) -> dict:
        return self.__getstate__()

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)



class BudgetLimiter(_PickledState):
    """search.budget_hours around a searcher: no new trial once the hours spent plus one more trial's projected
    cost would exceed the budget (search/costs.py's Budget). What was spent lives in its saved state."""

    def __init__(self, searcher: StudySearcher, budget: Budget) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.budget = searcher, budget
        self.spent: dict[str, tuple[float, float]] = {}  # trial id -> (wall seconds, kimg) of its latest report
        self.said = False

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.budget.allows_another(self.spent):
            if not self.said:
                self.said = True
                say(f"[spd-tune] budget: {self.budget.spent_hours(self.spent):.4g} of {self.budget.hours:g} "
                    f"{self.budget.unit}-hours spent, one more trial would take about "
                    f"{self.budget.projected_trial_hours(self.spent):.4g}: no new trials")
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def _spend(self, trial_id: str, result: dict | None) -> None:
        if result and "time_total_s" in result:
            self.spent[trial_id] = (float(result["time_total_s"]), float(result.get("kimg") or 0.0))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._spend(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._spend(trial_id, result)
        self.searcher.on_trial_complete(trial_id, result, error)

    def get_state(self) -> dict:
        return {"spent": dict(self.spent), "said": self.said, "searcher": self.searcher.get_state()}

    def set_state(self, state: dict) -> None:
        self.spent, self.said = dict(state["spent"]), state["said"]
        self.searcher.set_state(state["searcher"])

