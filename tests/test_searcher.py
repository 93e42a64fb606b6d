"""The search's own searcher: Optuna's public ask/tell behind Ray Tune's Searcher interface, without Ray running.
What each end of a trial is told, the first trial, and a save/restore as Tune does it between two drivers."""

import optuna
import pytest

from spd_tune.search.costs import Budget
from spd_tune.search.searcher import BudgetLimiter, StudySearcher
from spd_tune.search.space import load_space

State = optuna.trial.TrialState


@pytest.fixture
def space():
    return load_space("demo", ["search.trials=6"])


def _study(url):
    return optuna.load_study(study_name="demo", storage=url)


def test_each_end_is_told_as_what_it_was(space, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = StudySearcher(space, url)
    first = searcher.suggest("a")
    assert first == space.default_point()  # the space's own point first
    for trial_id in "bcdef":
        searcher.suggest(trial_id)
    metric, top = space.metric, space.max_kimg
    searcher.on_trial_result("a", {"kimg": 1.0, metric: 5.0})
    searcher.on_trial_complete("a", {"kimg": top, metric: 3.0})  # reached max_kimg
    searcher.on_trial_result("b", {"kimg": 1.0, metric: 9.0})
    searcher.on_trial_complete("b", {"kimg": 1.0, metric: 9.0})  # the scheduler stopped it
    searcher.on_trial_complete("c", {"kimg": 1.0, metric: float("nan"), "diverged": 1.0})
    searcher.on_trial_complete("d", None, error=True)
    searcher.on_trial_complete("e", None)  # ended before it ran
    trials = {t.user_attrs["spd_tune.trial_id"]: t for t in _study(url).trials}
    assert trials["a"].state == State.COMPLETE and trials["a"].value == 3.0
    assert trials["a"].intermediate_values == {1000: 5.0}
    assert trials["b"].state == State.PRUNED and trials["b"].intermediate_values == {1000: 9.0}
    assert trials["c"].state == State.FAIL and trials["c"].user_attrs["spd_tune.diverged"]
    assert trials["d"].state == State.FAIL and trials["d"].user_attrs["spd_tune.error"]
    assert trials["e"].state == State.FAIL and trials["e"].user_attrs["spd_tune.ended"]
    assert trials["f"].state == State.RUNNING  # e.g. interrupted: left for --resume


def test_a_restored_searcher_continues_its_trials(space, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = BudgetLimiter(StudySearcher(space, url), Budget(space))
    params = searcher.suggest("a")
    searcher.on_trial_result("a", {"kimg": 1.0, space.metric: 5.0, "time_total_s": 10.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = BudgetLimiter(StudySearcher(space, url), Budget(space))  # a new driver, as Tuner.restore builds it
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.spent == {"a": (10.0, 1.0)} and restored.searcher.suggest("a") == params
    restored.on_trial_result("a", {"kimg": 2.0, space.metric: 4.0, "time_total_s": 20.0})
    restored.on_trial_complete("a", {"kimg": space.max_kimg, space.metric: 3.5, "time_total_s": 30.0})
    trial = _study(url).trials[0]
    assert trial.state == State.COMPLETE and trial.intermediate_values == {1000: 5.0, 2000: 4.0}
    # an Optuna trial an earlier run closed takes no more results, and says so instead of failing
    again = StudySearcher(space, url)
    again.set_state({**restored.searcher.get_state(), "told": set()})
    again.on_trial_complete("a", {"kimg": space.max_kimg, space.metric: 3.5})
    assert _study(url).trials[0].value == 3.5


def test_the_budget_stops_new_trials_only(space, tmp_path):
    budgeted = load_space("demo", ["search.budget_hours=0.001"])
    searcher = BudgetLimiter(StudySearcher(budgeted, f"sqlite:///{tmp_path / 'optuna.db'}"), Budget(budgeted))
    assert isinstance(searcher.suggest("a"), dict)
    searcher.on_trial_result("a", {"kimg": 1.0, budgeted.metric: 5.0, "time_total_s": 60.0})
    assert searcher.suggest("b") == "FINISHED"
    searcher.on_trial_result("a", {"kimg": 2.0, budgeted.metric: 4.0, "time_total_s": 120.0})  # still reported
    assert _study(f"sqlite:///{tmp_path / 'optuna.db'}").trials[0].intermediate_values == {1000: 5.0, 2000: 4.0}
