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

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ..fsutil import atomic_path
from .correlation import lower_bound, spearman

STATE_VERSION = 1
GATE_STATE_FILE = "gate_state.json"  # beside the Optuna study: GatedASHA's rungs, anchors, stops and gates


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


class GatedASHA(FIFOScheduler):
    """Asynchronous successive halving whose rungs may stop a trial only once they have been shown to rank trials
    as the highest fidelity reached does, with full-length anchors that measure it without survivor bias.

    - Anchors: the first trial (the space's own point, or the spectrum fit's) and every ``anchor_every``-th trial
      after it run to max_t whatever the rungs say. Once every rung's gate is open, the spacing widens to
      ``anchor_every_open``: the anchors then only watch whether trust holds, and a rung that agrees costs
      little more than plain ASHA. When a gate closes again the spacing is back to ``anchor_every``.
    - The gate of a rung: Spearman's rho between the rung's scores and the scores at the highest milestone that at
      least ``min_pairs`` of the same trials reached, over every trial that reached both (anchors included). Its
      lower one-sided 95% bound (Fisher's z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3)) must exceed
      ``threshold`` for the rung to stop anything; until then the rung records and continues.
    - An open gate stops a trial, as ASHA does, when its score is worse than the best 1/reduction_factor of the
      scores recorded at that rung.
    The rungs, the anchors, the stops and the gates are written to ``state_file`` after every change and read
    back when the scheduler is unpickled (Tuner.restore), as PersistentASHA does."""

    def __init__(self, state_file: str | Path | None, *, time_attr: str = "kimg", metric: str | None = None,
                 mode: str | None = "min", max_t: float, grace_period: float, reduction_factor: float = 2.0,
                 anchor_every: int = 3, anchor_every_open: int | None = None, threshold: float = 0.3,
                 min_pairs: int = 4) -> None:
        super().__init__()
        anchor_every_open = anchor_every if anchor_every_open is None else anchor_every_open
        if not 1 <= anchor_every <= anchor_every_open or min_pairs < 4 or not -1.0 <= threshold < 1.0:
            raise ValueError("1 <= anchor_every <= anchor_every_open, min_pairs >= 4 and -1 <= threshold < 1")
        self.state_file = None if state_file is None else str(state_file)
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self.max_t, self.rf = float(max_t), float(reduction_factor)
        self.anchor_every, self.anchor_every_open = int(anchor_every), int(anchor_every_open)
        self.threshold, self.min_pairs = float(threshold), int(min_pairs)
        self.milestones, k = [], float(grace_period)
        while k < self.max_t - 1e-9:
            self.milestones.append(round(k, 6))
            k *= self.rf
        self.milestones.append(self.max_t)
        self.scores: dict[float, dict[str, float]] = {m: {} for m in self.milestones}  # as reported (lower better)
        self.order: list[str] = []  # trials in the order they were added
        self.anchors: set[str] = set()
        self.stopped: dict[str, float] = {}  # trial id -> the milestone whose open gate stopped it
        self.let_through: dict[str, float] = {}  # trial id -> the first milestone that would have stopped it, closed
        self._load()

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    # --- Tune's scheduler interface
    def on_trial_add(self, tune_controller, trial) -> None:
        if trial.trial_id not in self.order:
            if self._next_is_anchor():
                self.anchors.add(trial.trial_id)
            self.order.append(trial.trial_id)
            self._save()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        milestone = self._record(trial.trial_id, float(result[self._time_attr]), float(result[self._metric]))
        action = TrialScheduler.CONTINUE
        if float(result[self._time_attr]) >= self.max_t - 1e-9:
            action = TrialScheduler.STOP  # done
        elif milestone is not None and self._stops(trial.trial_id, milestone):
            self.stopped[trial.trial_id] = milestone
            action = TrialScheduler.STOP
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and self._time_attr in result and self._metric in result:
            self._record(trial.trial_id, float(result[self._time_attr]), float(result[self._metric]))
            self._save()

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass

    def debug_string(self) -> str:
        return "GatedASHA: " + "; ".join(f"{m:g} kimg {'open' if g['open'] else 'closed'} ({g['pairs']} pairs)"
                                         for m, g in self.gates().items())

    # --- the gate
    def gates(self) -> dict[float, dict]:
        """Per rung below max_t: {rho, lower, pairs, against (the milestone compared with), open}."""
        out = {}
        for i, milestone in enumerate(self.milestones[:-1]):
            rho, lower, pairs, against = math.nan, math.nan, 0, None
            for top in reversed(self.milestones[i + 1:]):
                both = [t for t in self.scores[milestone] if t in self.scores[top]]
                if len(both) >= self.min_pairs:
                    rho = spearman([self.scores[milestone][t] for t in both], [self.scores[top][t] for t in both])
                    lower, pairs, against = lower_bound(rho, len(both)), len(both), top
                    break
            out[milestone] = {"rho": rho, "lower": lower, "pairs": pairs, "against": against,
                              "open": bool(math.isfinite(lower) and lower > self.threshold)}
        return out

    def _next_is_anchor(self) -> bool:
        last = max((i for i, t in enumerate(self.order) if t in self.anchors), default=None)
        if last is None:
            return True
        all_open = all(gate["open"] for gate in self.gates().values())
        return len(self.order) - last >= (self.anchor_every_open if all_open else self.anchor_every)

    def _record(self, trial_id: str, t: float, score: float) -> float | None:
        """Record the score at the highest milestone reached and not yet recorded; that milestone, or None."""
        reached = [m for m in self.milestones if t >= m - 1e-9 and trial_id not in self.scores[m]]
        if not reached:
            return None
        milestone = reached[-1]
        self.scores[milestone][trial_id] = score if math.isfinite(score) else math.inf
        return milestone

    def _stops(self, trial_id: str, milestone: float) -> bool:
        if milestone >= self.max_t:
            return False
        values = sorted(self.scores[milestone].values())
        keep = max(1, int(math.floor(len(values) / self.rf)))
        below_cutoff = self.scores[milestone][trial_id] > values[keep - 1]
        if below_cutoff and (trial_id in self.anchors or not self.gates()[milestone]["open"]):
            self.let_through.setdefault(trial_id, milestone)  # ASHA would have stopped it here
            return False
        return below_cutoff

    # --- persistence (as PersistentASHA)
    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    def _state(self) -> dict:
        gates = {f"{m:g}": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in g.items()}
                 for m, g in self.gates().items()}
        return {"version": STATE_VERSION, "kind": "gated", "threshold": self.threshold, "order": self.order,
                "anchors": sorted(self.anchors), "stopped": self.stopped, "let_through": self.let_through,
                "gates": gates,
                "scores": [[m, _finite_or_none(s)] for m, s in self.scores.items()]}

    def _save(self) -> None:
        if self.state_file is None:
            return
        with atomic_path(self.state_file) as tmp:
            tmp.write_text(json.dumps(self._state()))

    def _load(self) -> None:
        if self.state_file is None or not Path(self.state_file).is_file():
            return
        state = json.loads(Path(self.state_file).read_text())
        if state.get("kind") != "gated" or state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_file} holds the state of another scheduler")
        self.order, self.anchors = list(state["order"]), set(state["anchors"])
        self.stopped = {k: float(v) for k, v in state["stopped"].items()}
        self.let_through = {k: float(v) for k, v in state.get("let_through", {}).items()}
        for milestone, saved in state["scores"]:
            self.scores.setdefault(float(milestone), {}).update(
                {t: math.inf if v is None else float(v) for t, v in saved.items()})


def read_gates(state_file: str | Path) -> dict | None:
    """A GatedASHA's saved state as the search reports it: {threshold, anchors, stopped, gates}, or None."""
    path = Path(state_file)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state.get("kind") != "gated":
        return None
    return {k: state.get(k, {}) for k in ("threshold", "anchors", "stopped", "let_through", "gates")}
