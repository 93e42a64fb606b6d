"""Early-stopping schedulers whose state outlives the driver.

Ray Tune pickles the scheduler once, into ``tuner.pkl`` when the Tuner is built, and never saves it again:
after ``Tuner.restore`` an ASHA scheduler would start with empty rungs, and the first trials to reach a rung
after a resume would pass it whatever the first run had recorded there. ``PersistentASHA`` writes its rungs to
a JSON file beside the Optuna study after every change and reads them back when it is unpickled, so a resumed
search stops trials on what the whole search has measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from ..fsutil import atomic_path

STATE_VERSION = 1


class PersistentASHA(ASHAScheduler):
    """Ray's ASHA (asynchronous successive halving) with its rung records kept in ``state_file``."""

    def __init__(self, state_file: str | Path | None, **asha) -> None:
        """``state_file`` None: nothing is kept (the replay simulator drives it in-process)."""
        super().__init__(**asha)
        self.state_file = None if state_file is None else str(state_file)
        self._load()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)  # a restored trial may never have been added in this run

    def __setstate__(self, state: dict) -> None:  # Tuner.restore unpickles the scheduler of tuner.pkl
        self.__dict__.update(state)
        self._load()

    def rungs(self) -> list[dict]:
        """Every bracket's rungs, lowest first: [{milestone, scores: {trial id: score}}] (scores as reported)."""
        sign = -1.0 if self._mode == "min" else 1.0  # ASHA records metric_op * score
        return [[{"milestone": milestone, "scores": {t: sign * v for t, v in recorded.items()}}
                 for milestone, recorded in reversed(bracket._rungs)] for bracket in self._brackets]

    def _state(self) -> dict:
        return {"version": STATE_VERSION, "num_stopped": self._num_stopped,
                "brackets": [[[milestone, _finite_or_none(recorded)] for milestone, recorded in bracket._rungs]
                             for bracket in self._brackets]}

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = self._state()
        if state == getattr(self, "_saved_state", None):
            return
        with atomic_path(self.state_file) as tmp:
            tmp.write_text(json.dumps(state))
        self._saved_state = state

    def _load(self) -> None:
        if self.state_file is None:
            return
        path = Path(self.state_file)
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        if state.get("version") != STATE_VERSION or len(state["brackets"]) != len(self._brackets):
            raise ValueError(f"{path} holds the rungs of another scheduler")
        for bracket, saved in zip(self._brackets, state["brackets"]):
            by_milestone = {float(milestone): recorded for milestone, recorded in saved}
            for milestone, recorded in bracket._rungs:
                for trial_id, value in by_milestone.get(float(milestone), {}).items():
                    recorded[trial_id] = math.nan if value is None else float(value)
        self._num_stopped = int(state["num_stopped"])
        self._saved_state = self._state()


def _finite_or_none(recorded: dict) -> dict:
    """JSON has no NaN: a non-finite record is kept as null (ASHA's cutoff ignores NaN)."""
    return {t: (float(v) if math.isfinite(float(v)) else None) for t, v in recorded.items()}
