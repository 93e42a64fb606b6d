"""The console's account of a running search, one line per event: a trial reaching a rung (its kimg of the most,
its score, the best so far, and the hours spent against the budget when there is one), a trial stopping,
finishing, diverging or failing, and a trial the gate let through where plain ASHA would have stopped it. Tune's
own status tables go to ray.log (search/console.py)."""

from __future__ import annotations

import math

from ray.tune import Callback

from .console import say
from .costs import Budget
from .schedulers import read_gates
from .space import Space
from .trials import diverged, stopped_early

PREFIX = "[spd-tune]"


class TrialEvents(Callback):
    """A Tune callback on the driver; it keeps nothing that a resumed search needs."""

    def __init__(self, space: Space, gate_file: str | None = None):
        self.metric, self.max_kimg = space.metric, space.max_kimg
        self.rungs = space.rungs()
        self.budget = Budget(space) if space.search.budget_hours is not None else None
        self.gate_file = gate_file
        self.best: tuple[float, str] | None = None
        self.spent: dict[str, tuple[float, float]] = {}
        self.passed: dict[str, float] = {}  # trial id -> the highest rung it has been reported at
        self.told_let_through: set[str] = set()

    def __getstate__(self):
        return {**self.__dict__, "told_let_through": set(), "passed": {}}

    def _new_rung(self, trial_id: str, kimg: float) -> bool:
        """The report is the trial's first at or after a rung it had not reached (a rung's evaluation lands on
        the first step past it: 1.024 kimg for the rung at 1 kimg)."""
        reached = [r for r in self.rungs if r <= kimg + 1e-9]
        if not reached or reached[-1] <= self.passed.get(trial_id, -1.0):
            return False
        self.passed[trial_id] = reached[-1]
        return True

    def on_trial_result(self, iteration, trials, trial, result, **info):
        kimg = float(result.get("kimg") or 0.0)
        self.spent[trial.trial_id] = (float(result.get("time_total_s") or 0.0), kimg)
        score = result.get(self.metric)
        if not isinstance(score, (int, float)) or not self._new_rung(trial.trial_id, kimg):
            return
        if math.isfinite(score) and (self.best is None or score < self.best[0]):
            self.best = (float(score), trial.trial_id)
        best = f"; best so far {self.best[0]:.4f} (trial {self.best[1]})" if self.best else ""
        say(f"{PREFIX} trial {trial.trial_id}: {kimg:g}/{self.max_kimg:g} kimg, {self.metric} {score:.4f}{best}"
            + self._budget())
        self._gate_events()

    def _budget(self) -> str:
        if self.budget is None:
            return ""
        return (f"; {self.budget.spent_hours(self.spent):.3g} of {self.budget.hours:g} {self.budget.unit}-hours "
                "spent")

    def _gate_events(self) -> None:
        state = read_gates(self.gate_file) if self.gate_file else None
        for trial_id, kimg in sorted((state or {}).get("let_through", {}).items()):
            if trial_id not in self.told_let_through:
                self.told_let_through.add(trial_id)
                say(f"{PREFIX} trial {trial_id}: let through at {float(kimg):g} kimg, where plain ASHA would have "
                    "stopped it (its rung's gate is closed, or it is an anchor)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        kimg = float(last.get("kimg") or 0.0)
        if diverged(last):
            say(f"{PREFIX} trial {trial.trial_id}: diverged at {kimg:g} kimg (non-finite loss); the search goes on")
        elif stopped_early(kimg, self.max_kimg):
            say(f"{PREFIX} trial {trial.trial_id}: stopped at {kimg:g} kimg by its rung")
        else:
            say(f"{PREFIX} trial {trial.trial_id}: finished at {kimg:g} kimg")

    def on_trial_error(self, iteration, trials, trial, **info):
        say(f"{PREFIX} trial {trial.trial_id}: failed (its error is in ray.log); the search goes on")
