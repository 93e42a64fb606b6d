"""The post-hoc study of one finalist: a small seeded Optuna study over the EMA width and the sampler, each point
scored on the finalist's trained weights (posthoc/evaluate.py) instead of by a training.

Points are asked and told in fixed batches, and told in trial order whatever order their evaluations finish
in, so the same seed gives the same post-hoc trials. The study lives in the search's Optuna storage, named
``<study name>/posthoc/<trial id>``; a driver killed part-way leaves trials asked but not told, which a resumed
study evaluates at their own points before asking new ones, so no evaluation is lost or repeated after a tell.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import optuna

from ..core.samplers import SamplerConfig, uses_eta
from ..posthoc import PosthocPoint
from .space import PosthocConfig

RESULT_ATTR = "spd_tune.result"  # a study user attribute per told trial: <attr>.<trial number> -> its result
EvaluateBatch = Callable[[Sequence[PosthocPoint]], Sequence[dict]]


def posthoc_study_name(study_name: str, trial_id: str) -> str:
    return f"{study_name}/posthoc/{trial_id}"


def _k_range(ph: PosthocConfig, steps: int) -> tuple[int, int]:
    high = min(steps, ph.k_max or steps)
    return min(ph.k_min, high), high


def suggest(trial: optuna.Trial, ph: PosthocConfig, steps: int, power: bool) -> PosthocPoint:
    """One point, drawn by the study's sampler: the sampler kind, K on a log scale, DDIM's eta, the EMA width."""
    kind = trial.suggest_categorical("sampler", list(ph.samplers))
    k = trial.suggest_int("steps", *_k_range(ph, steps), log=True)
    eta = 0.0
    if uses_eta(kind):
        eta = trial.suggest_float("eta", *ph.eta) if ph.eta[1] > ph.eta[0] else ph.eta[0]
    sigma_rel = trial.suggest_float("sigma_rel", *ph.sigma_rel, log=True) if ph.sigma_rel and power else None
    return PosthocPoint(SamplerConfig(kind, steps=k, eta=eta), sigma_rel=sigma_rel)


def point_of(params: dict, ph: PosthocConfig) -> PosthocPoint:
    """The point of a trial already asked (its stored params), e.g. one a killed driver never told."""
    kind = params["sampler"]
    return PosthocPoint(SamplerConfig.of(kind, steps=int(params["steps"]), eta=params.get("eta", ph.eta[0])),
                        sigma_rel=params.get("sigma_rel"))


def open_study(storage, study_name: str, seed: int, metric: str | None = None) -> optuna.Study:
    """The study, created or loaded; ``metric`` names its objective (what optuna-dashboard shows)."""
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    if metric is not None and study.metric_names != [metric]:
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
    return study


def run_study(study: optuna.Study, ph: PosthocConfig, steps: int, power: bool,
              evaluate: EvaluateBatch) -> list[dict]:
    """Run the study to ``ph.evaluations`` told trials; every evaluation's result (with its trial number), in
    trial order."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    while True:
        told = len(study.get_trials(deepcopy=False, states=finished))
        pending = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if pending:  # asked by a driver that was killed before telling them
            trials = pending
            points = [point_of(t.params, ph) for t in pending]
        elif told < ph.evaluations:
            trials = [study.ask() for _ in range(min(ph.batch, ph.evaluations - told))]
            points = [suggest(t, ph, steps, power) for t in trials]
        else:
            break
        results = list(evaluate(points))
        if len(results) != len(points):
            raise RuntimeError(f"{len(points)} post-hoc points evaluated as {len(results)} results")
        for trial, result in sorted(zip(trials, results), key=lambda item: item[0].number):
            # on the study, keyed by trial number: a trial asked by an earlier driver (a FrozenTrial here) takes
            # no attributes through Optuna's public API
            study.set_user_attr(f"{RESULT_ATTR}.{trial.number}", {k: v for k, v in result.items() if k != "point"})
            number, score = trial.number, result["score"]
            if math.isfinite(score):
                study.tell(number, score)
            else:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
    return study_results(study, ph)


def study_results(study: optuna.Study, ph: PosthocConfig) -> list[dict]:
    """Every told trial as {trial, score, nfe, point, ...}, in trial order."""
    out, stored = [], study.user_attrs
    for t in study.get_trials(deepcopy=False):
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            result = dict(stored.get(f"{RESULT_ATTR}.{t.number}", {}))
            out.append({"trial": t.number, **result, "point": point_of(t.params, ph).as_dict()})
    return out
