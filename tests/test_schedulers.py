"""PersistentASHA: Ray's ASHA, whose rungs outlive the driver (Tune pickles the scheduler once, when the Tuner is
built, and never saves it again)."""

import json
import pickle

import pytest
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


# --- GatedASHA -------------------------------------------------------------------------------------------------

from spd_tune.search.correlation import lower_bound  # noqa: E402
from spd_tune.search.schedulers import GatedASHA  # noqa: E402


def _gated(path=None, **kw):
    return GatedASHA(path, metric="score", max_t=4, grace_period=1, reduction_factor=2, **kw)


def _run(scheduler, trial_id: str, curve: dict[float, float]) -> list[str]:
    """Report the curve until the scheduler stops the trial; its decisions."""
    trial = Trial(trial_id)
    scheduler.on_trial_add(None, trial)
    decisions = []
    for kimg, score in curve.items():
        decisions.append(scheduler.on_trial_result(None, trial, {"kimg": kimg, "score": score}))
        if decisions[-1] == TrialScheduler.STOP:
            scheduler.on_trial_complete(None, trial, {"kimg": kimg, "score": score})
            break
    return decisions


def test_a_rung_whose_ranking_disagrees_with_the_end_never_stops_a_trial():
    scheduler = _gated(anchor_every=1000)  # only the first trial is an anchor
    # at 1 and 2 kimg the order is the reverse of the order at 4 kimg: rho = -1
    for i in range(8):
        decisions = _run(scheduler, f"t{i}", {1: 10.0 - i, 2: 5.0 - i, 4: 1.0 + i})
        assert TrialScheduler.STOP not in decisions[:-1], (i, decisions)
    gate = scheduler.gates()[1.0]
    assert gate["pairs"] == 8 and gate["rho"] == pytest.approx(-1.0) and not gate["open"]


def test_a_rung_that_agrees_opens_and_then_stops_the_worse_half():
    scheduler = _gated(anchor_every=1000, threshold=0.0)
    for i in range(8):  # the same order at every milestone; the later trials are worse
        _run(scheduler, f"t{i}", {1: 1.0 + i, 2: 1.0 + i, 4: 1.0 + i})
    assert scheduler.gates()[1.0]["open"] and scheduler.gates()[1.0]["lower"] > 0.0
    assert _run(scheduler, "worse", {1: 100.0, 2: 100.0, 4: 100.0}) == [TrialScheduler.STOP]
    assert scheduler.stopped["worse"] == 1.0
    assert _run(scheduler, "better", {1: 0.5, 2: 0.5, 4: 0.5})[-1] == TrialScheduler.STOP  # max_t: done, not stopped
    assert "better" not in scheduler.stopped


def test_anchors_always_reach_max_kimg():
    scheduler = _gated(anchor_every=2, threshold=-1.0)
    for i in range(8):
        _run(scheduler, f"t{i}", {1: 1.0 + i, 2: 1.0 + i, 4: 1.0 + i})
    assert scheduler.anchors == {"t0", "t2", "t4", "t6"}
    for i in range(8, 16):  # ever worse trials at an open gate
        decisions = _run(scheduler, f"t{i}", {1: 100.0 + i, 2: 100.0 + i, 4: 100.0 + i})
        if f"t{i}" in scheduler.anchors:
            assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.CONTINUE, TrialScheduler.STOP]
            assert f"t{i}" in scheduler.scores[4.0]
        else:
            assert decisions == [TrialScheduler.STOP]


def test_the_gate_state_survives_a_restore(tmp_path):
    state = tmp_path / "gate.json"
    scheduler = _gated(state, threshold=0.0)
    as_in_tuner_pkl = pickle.dumps(scheduler)
    for i in range(8):
        _run(scheduler, f"t{i}", {1: 1.0 + i, 2: 1.0 + i, 4: 1.0 + i})
    restored = pickle.loads(as_in_tuner_pkl)
    assert restored.gates() == scheduler.gates() and restored.anchors == scheduler.anchors
    assert restored.order == scheduler.order and restored.stopped == scheduler.stopped
    assert _run(restored, "worse", {1: 100.0}) == _run(scheduler, "worse2", {1: 100.0})


def test_the_lower_bound_is_below_rho_and_tightens_with_pairs():
    assert lower_bound(0.8, 3) != lower_bound(0.8, 3)  # NaN below 4 pairs
    assert lower_bound(0.8, 5) < lower_bound(0.8, 50) < 0.8
    assert lower_bound(-0.5, 10) < -0.5


def test_a_perfect_order_of_few_pairs_is_not_trusted():
    # 4 pairs in order happen by chance 1 time in 24: no gate opens on them at the default threshold;
    # 5 (1 in 120) do.
    assert lower_bound(1.0, 4) < 0.3 < lower_bound(1.0, 5) < lower_bound(1.0, 6) < 1.0
    scheduler = _gated(anchor_every=1000, min_pairs=4)
    for i in range(4):
        _run(scheduler, f"t{i}", {1: 1.0 + i, 2: 1.0 + i, 4: 1.0 + i})
    assert scheduler.gates()[1.0]["pairs"] == 4 and not scheduler.gates()[1.0]["open"]
    assert TrialScheduler.STOP not in _run(scheduler, "worse", {1: 100.0, 2: 100.0, 4: 100.0})[:-1]


def test_anchors_thin_out_once_every_gate_is_open_and_thicken_when_one_closes():
    scheduler = _gated(anchor_every=2, anchor_every_open=4, threshold=0.0)
    for i in range(9):  # the gates open at 5 pairs in order (t0..t4): from then on 1 anchor in 4
        _run(scheduler, f"t{i}", {1: 1.0 + i, 2: 1.0 + i, 4: 1.0 + i})
    assert scheduler.anchors == {"t0", "t2", "t4", "t8"}
    i = 9
    while all(g["open"] for g in scheduler.gates().values()):  # trials best at the rungs and worst at the end
        _run(scheduler, f"t{i}", {1: 0.5 - 0.01 * i, 2: 0.5 - 0.01 * i, 4: 100.0 + i})
        i += 1
        assert i < 40
    for j in (i, i + 1):
        _run(scheduler, f"t{j}", {1: 1.0, 2: 1.0, 4: 1.0})
    assert scheduler.anchors & {f"t{i}", f"t{i + 1}"}  # back to 1 in 2
