"""One replayed search, in simulated time, on a table of learning curves.

- The searcher proposes configurations: Optuna's TPE with the space's sampler settings (its seed, its startup
  trials, the space's own point first when the space enqueues it), or random search. A proposal is mapped to the
  table's **nearest grid point** (in each parameter's range scaled to [0, 1], log-scaled where the space searches on
  a log scale), and the trial draws one of that configuration's training seeds.
- W workers run trials at once. A trial reports at the space's rungs; the time to the next report is the table's
  recorded seconds for that segment times a jitter drawn from the table's own variation (log-normal, the spread of
  the same segment across runs), so results arrive in the order simulated time gives, and the order changes with
  the arrival-order seed.
- At each report the policy decides, through the scheduler object the search runs (replay/policies.py), called
  as Tune calls it. A stopped trial is told to the searcher as PRUNED with its intermediate values, a finished
  one as COMPLETE with its last score, as the live search does.
- At the end the champion is chosen as the live search chooses it: the final protocol over the ``top_k`` trials by
  best rung score and the baseline (the first trial). A finalist that ran to ``max_kimg`` is judged by its run's
  final values; one that was stopped, by its best rung score (what its checkpoint was scored at).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import optuna
from ray.tune.schedulers import TrialScheduler

from ..train.config import nimg
from . import policies
from .table import Table, finite_or_inf

DEFAULT_JITTER = 0.1  # log-normal sigma when the table has one run per segment


@dataclass(eq=False)
class SimTrial:
    """What a scheduler sees of a trial (its id; Ray's schedulers key their state on the trial object)."""

    trial_id: str
    number: int
    config: dict
    run: dict
    reports: list[tuple[float, float, float]]  # (kimg, score, seconds of the segment ending there)
    optuna_trial: optuna.trial.Trial | None = None
    reported: list[tuple[float, float]] = field(default_factory=list)
    stopped: bool = False
    status: str = "RUNNING"  # Tune's trial status, which the median rule reads

    @property
    def kimg(self) -> float:
        return self.reported[-1][0] if self.reported else 0.0

    @property
    def best(self) -> float:
        finite = [s for _, s in self.reported if math.isfinite(s)]
        return min(finite) if finite else math.inf


class Controller:
    """The part of Tune's controller that schedulers read: the live trials."""

    def __init__(self, trials: list[SimTrial]):
        self.trials = trials

    def get_live_trials(self) -> list[SimTrial]:
        return [t for t in self.trials if t.status == "RUNNING"]

    def get_trials(self) -> list[SimTrial]:
        return list(self.trials)


@dataclass(frozen=True)
class Outcome:
    champion: str  # its configuration's key
    value: float  # the champion's final score in the table
    regret: float
    success: bool
    proposed_best: bool
    thrown_away: bool
    compute: float  # kimg trained / (trials x max_kimg)
    trials: int


class Replay:
    """A table prepared once for many replays: configurations, distributions, report points, jitter, the best."""

    def __init__(self, table: Table, protocol: str = "rung"):
        self.table, self.protocol = table, protocol
        self.search = table.data["search"]
        self.metric, self.max_kimg = table.metric, table.max_kimg
        self.stats = {s["key"]: s for s in table.final_stats()}
        self.configs = [c for c in table.configs if c["key"] in self.stats]
        self.best = table.best()
        self.params = self.search["params"]
        self.distributions = {name: _distribution(spec) for name, spec in self.params.items()}
        self.rungs = [float(r) for r in table.data["rungs"]]
        self.sigma = _jitter(table)
        self._coords = np.array([[_coord(spec, c["params"][n]) for n, spec in self.params.items()]
                                 for c in self.configs])

    def nearest(self, params: dict) -> dict:
        point = np.array([_coord(spec, params[n]) for n, spec in self.params.items()])
        return self.configs[int(np.argmin(((self._coords - point) ** 2).sum(axis=1)))]

    def reports(self, run: dict, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """(kimg, score, jittered seconds since the previous report) at each rung the run reached."""
        out, spent, rung = [], 0.0, 0
        for point in run["points"]:
            spent += float(point.get("seconds") or 0.0) * math.exp(rng.normal(0.0, self.sigma))
            if rung < len(self.rungs) and point["kimg"] >= self.rungs[rung] - 1e-9:
                scores = point["scores"]  # a candidate protocol is not recorded at max_kimg: the rung score there
                out.append((float(point["kimg"]), finite_or_inf(scores.get(self.protocol, scores.get("rung"))), spent))
                spent, rung = 0.0, rung + 1
        return out

    def final_value(self, trial: SimTrial) -> float:
        if trial.stopped or trial.kimg < self.max_kimg - 1e-9:
            return trial.best
        values = [finite_or_inf(v) for v in trial.run["final"]["values"]]
        return float(np.mean(values))

    def run(self, policy: str, seed: int, order: int, workers: int, searcher: str = "tpe") -> Outcome:
        """One replayed search: ``seed`` drives the searcher, ``order`` the seeds drawn and the jitter."""
        rng = np.random.default_rng([seed, order])
        np.random.seed([seed, order])  # Ray's multi-bracket ASHA draws a bracket from NumPy's global generator
        scheduler = policies.build(policy, self.search, self.max_kimg, self.metric)
        study = _study(self.search, seed, searcher)
        default = self.table.data.get("default_point")
        if default and self.search.get("enqueue_defaults", True):
            study.enqueue_trial(default)
        trials: list[SimTrial] = []
        controller = Controller(trials)
        events: list[tuple[float, int, int]] = []  # (time, trial number, report index)
        now, free, n_trials = 0.0, workers, int(self.search["trials"])
        while True:
            while free and len(trials) < n_trials:
                trial = self._launch(study, len(trials), rng)
                scheduler.on_trial_add(controller, trial)
                trials.append(trial)
                heapq.heappush(events, (now + trial.reports[0][2], trial.number, 0))
                free -= 1
            if not events:
                break
            now, number, index = heapq.heappop(events)
            trial = trials[number]
            kimg, score, _ = trial.reports[index]
            trial.reported.append((kimg, score))
            result = {"kimg": kimg, self.metric: score, "trial_id": trial.trial_id}
            if math.isfinite(score):
                trial.optuna_trial.report(score, nimg(kimg))
            action = scheduler.on_trial_result(controller, trial, result)
            last = index == len(trial.reports) - 1
            if last or action == TrialScheduler.STOP:
                trial.stopped = not (last and kimg >= self.max_kimg - 1e-9)
                trial.status = "TERMINATED"
                scheduler.on_trial_complete(controller, trial, result)
                if trial.stopped:
                    study.tell(trial.optuna_trial, state=optuna.trial.TrialState.PRUNED)
                elif math.isfinite(score):
                    study.tell(trial.optuna_trial, score)
                else:
                    study.tell(trial.optuna_trial, state=optuna.trial.TrialState.FAIL)
                free += 1
            else:
                heapq.heappush(events, (now + trial.reports[index + 1][2], number, index + 1))
        return self._outcome(trials)

    def _launch(self, study: optuna.Study, number: int, rng: np.random.Generator) -> SimTrial:
        ot = study.ask(self.distributions)
        config = self.nearest(ot.params)
        runs = self.table.complete_runs(config)
        run = runs[int(rng.integers(len(runs)))]
        return SimTrial(f"t{number:04d}", number, config, run, self.reports(run, rng), ot)

    def _outcome(self, trials: list[SimTrial]) -> Outcome:
        top_k = max(1, int(self.search["final"]["top_k"]))
        ranked = sorted((t for t in trials if math.isfinite(t.best)), key=lambda t: t.best)
        finalists = ranked[:top_k]
        if self.table.data.get("default_point") and trials and trials[0] not in finalists:
            finalists.append(trials[0])  # the baseline: always a finalist
        champion = min(finalists, key=lambda t: (self.final_value(t), t.number))
        stats = self.stats[champion.config["key"]]
        value = stats["mean"] if not champion.stopped else champion.best
        best = self.best
        se = math.sqrt(_sq(stats["se"]) + _sq(best["se"]))
        best_trials = [t for t in trials if t.config["key"] == best["key"]]
        return Outcome(champion=champion.config["key"], value=value, regret=value - best["mean"],
                       success=bool(champion.config["key"] == best["key"] or value <= best["mean"] + 2 * se),
                       proposed_best=bool(best_trials),
                       thrown_away=bool(best_trials) and all(t.stopped for t in best_trials),
                       compute=sum(t.kimg for t in trials) / (len(trials) * self.max_kimg), trials=len(trials))


def _sq(value: float) -> float:
    return value * value if math.isfinite(value) else 0.0


def _distribution(spec: dict):
    if spec["type"] == "categorical":
        return optuna.distributions.CategoricalDistribution(list(spec["choices"]))
    if spec["type"] == "int":
        return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec["log"]))
    return optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec["log"]))


def _coord(spec: dict, value) -> float:
    if spec["type"] == "categorical":
        return float(list(spec["choices"]).index(value))
    lo, hi, v = float(spec["low"]), float(spec["high"]), float(value)
    if spec["log"]:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return (v - lo) / (hi - lo) if hi > lo else 0.0


def _study(search: dict, seed: int, searcher: str) -> optuna.Study:
    if searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(search["startup_trials"]))
    return optuna.create_study(direction="minimize", sampler=sampler)


def _jitter(table: Table) -> float:
    """The spread of log(segment seconds) across the runs of the same segment, pooled over segments."""
    by_segment: dict[float, list[float]] = {}
    for config in table.configs:
        for run in config["runs"]:
            for point in run["points"]:
                if point.get("seconds"):
                    by_segment.setdefault(round(point["kimg"], 6), []).append(math.log(point["seconds"]))
    spreads = [np.var(v, ddof=1) for v in by_segment.values() if len(v) > 1]
    return float(math.sqrt(np.mean(spreads))) if spreads else DEFAULT_JITTER
