"""Ray Tune over Ray Train: one trial is one Train run; an Optuna study proposes (search/searcher.py), ASHA stops
poor trials early.

The searcher's Optuna trials carry the Tune trial id, and so do the Train run (``train-<trial id>``) and the MLflow
child run: the three records of a trial join on it, and a resumed search finds its own.
"""

from __future__ import annotations

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler

from ..errors import ConfigError, first_line
from ..train.driver import ReportQueue, build_trainer, fit_reporting, trial_callbacks
from .costs import Budget
from .events import TrialEvents
from .interrupt import active
from .plan import Layout
from .schedulers import GATE_STATE_FILE, GatedASHA, PersistentASHA
from .searcher import BudgetLimiter, StudySearcher
from .space import Space
from .tracking import MLflowCallback
from .trials import trial_run_name

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


def make_searcher(space: Space, layout: Layout) -> BudgetLimiter:
    """Seeded TPE over the space's own Optuna study, the space's point first, inside the budget."""
    return BudgetLimiter(StudySearcher(space, layout.optuna_url), Budget(space))


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
    elif space.search.gate.enabled:
        gate = space.search.gate
        scheduler = GatedASHA(layout.root / GATE_STATE_FILE, time_attr="kimg", max_t=space.max_kimg,
                              grace_period=asha.grace_kimg, reduction_factor=asha.reduction_factor,
                              anchor_every=gate.anchor_every, anchor_every_open=gate.anchor_every_open,
                              threshold=gate.threshold, min_pairs=gate.min_pairs)
    else:
        scheduler = PersistentASHA(layout.root / ASHA_STATE_FILE, time_attr="kimg", max_t=space.max_kimg,
                                   grace_period=asha.grace_kimg, reduction_factor=asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space={},  # the searcher holds the space (search/searcher.py)
        tune_config=tune.TuneConfig(
            # in multi-objective mode the searcher holds both objectives; Tune would overwrite them with one
            metric=None if multi else space.metric, mode=None if multi else "min",
            num_samples=space.search.trials, search_alg=make_searcher(space, layout),
            scheduler=scheduler,
            max_concurrent_trials=max_concurrent, time_budget_s=space.search.time_budget_s),
        run_config=tune.RunConfig(
            name=space.train.name, storage_path=layout.under_storage("tune"),
            callbacks=[MLflowCallback(layout.tracking_uri, space.train.name, str(layout.root / "mlartifacts"),
                                      space.max_kimg, list(space.search.params),
                                      gate_file=str(layout.root / GATE_STATE_FILE)),
                       TrialEvents(space, str(layout.root / GATE_STATE_FILE)), StopOnSignal()],
            failure_config=tune.FailureConfig(max_failures=1)),
    )
