"""PersistentASHA: Ray's ASHA, whose rungs outlive the driver (Tune pickles the scheduler once, when the Tuner is
built, and never saves it again)."""

import json
import pickle

from ray.tune.schedulers import TrialScheduler

from spd_tune.search.schedulers import PersistentASHA


class Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _asha(path):
    return PersistentASHA(path, time_attr="kimg", max_t=4, grace_period=1, reduction_factor=2, metric="score",
                          mode="min")


def _report(scheduler, trial_id: str, kimg: float, score: float) -> str:
    trial = Trial(trial_id)
    if trial_id not in scheduler._trial_info:
        scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"kimg": kimg, "score": score})


def test_a_restored_scheduler_stops_on_the_rungs_the_first_run_recorded(tmp_path):
    state = tmp_path / "asha_state.json"
    scheduler = _asha(state)
    as_in_tuner_pkl = pickle.dumps(scheduler)  # what Tuner.restore unpickles: the scheduler before any result
    decisions = [_report(scheduler, trial_id, 1, score) for trial_id, score in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.STOP]
    restored = pickle.loads(as_in_tuner_pkl)
    assert restored.rungs() == scheduler.rungs()
    assert restored.rungs()[0][0]["scores"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    # the same decision as the uninterrupted scheduler: 2.5 is worse than the rung's median, so it stops
    assert _report(restored, "d", 1, 2.5) == TrialScheduler.STOP
    assert _report(scheduler, "d", 1, 2.5) == TrialScheduler.STOP
    # without the saved rungs, the first trial at a rung always passes it (the defect this class removes)
    assert _report(_asha(tmp_path / "elsewhere.json"), "d", 1, 2.5) == TrialScheduler.CONTINUE
    assert json.loads(state.read_text())["version"] == 1


def test_non_finite_scores_are_kept_as_missing(tmp_path):
    scheduler = _asha(tmp_path / "s.json")
    _report(scheduler, "a", 1, float("nan"))
    _report(scheduler, "b", 1, 1.0)
    restored = _asha(tmp_path / "s.json")
    scores = restored.rungs()[0][0]["scores"]
    assert scores["b"] == 1.0 and scores["a"] != scores["a"]  # NaN
