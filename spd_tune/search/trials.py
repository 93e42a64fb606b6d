"""What a trial is once Tune is done: typed records built once from Tune's results, and the definitions the rest of
the search shares (its Train run's name, "diverged", "stopped early"). After the tuner, this is the only module
that reads Tune's result objects; every later stage reads records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


def trial_run_name(trial_id: str) -> str:
    """The Ray Train run a trial trains in (under the search's storage)."""
    return f"train-{trial_id}"


def stopped_early(kimg: float, max_kimg: float) -> bool:
    """A trial that ended before its last rung (ASHA stopped it): the one definition of "stopped early"."""
    return float(kimg) < max_kimg - 1e-9


def diverged(result: dict | None) -> bool:
    """The run stopped on a non-finite loss (train/loop.py): a failed trial, whatever its earlier scores."""
    return bool(result) and bool(result.get("diverged"))


@dataclass(frozen=True)
class Report:
    kimg: float
    score: float  # NaN or inf when the evaluation failed or the run diverged
    seconds: float  # Tune's time_total_s at this report (training and evaluations so far)


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str  # "" for a trial that never reported (it failed before its first report)
    params: dict  # the space's parameters, as the searcher proposed them
    reports: tuple[Report, ...]  # every report with a score, in kimg order
    last: dict = field(default_factory=dict)  # the last reported metrics (kimg, nfe, diverged, the score, ...)
    error: bool = False  # Tune recorded an error for it

    @property
    def run_name(self) -> str:
        return trial_run_name(self.trial_id)

    @property
    def kimg(self) -> float:
        return float(self.last.get("kimg") or 0.0)

    @property
    def seconds(self) -> float:
        return float(self.last.get("time_total_s") or 0.0)

    @property
    def diverged(self) -> bool:
        return diverged(self.last)

    @property
    def finite_reports(self) -> tuple[Report, ...]:
        return tuple(r for r in self.reports if math.isfinite(r.score))

    @property
    def best_score(self) -> float:
        """The lowest finite score reported (NaN when none)."""
        return min((r.score for r in self.finite_reports), default=math.nan)

    def stopped_early(self, max_kimg: float) -> bool:
        return stopped_early(self.kimg, max_kimg)

    def state(self, max_kimg: float) -> str:
        """error | diverged | stopped | complete."""
        if self.error:
            return "error"
        if self.diverged:
            return "diverged"
        return "stopped" if self.stopped_early(max_kimg) else "complete"


def records_of(results, metric: str, params: list[str]) -> list[TrialRecord]:
    """One record per trial of a Tune ResultGrid (those that never reported with trial_id "")."""
    out = []
    for result in results:
        last = dict(result.metrics or {})
        if not last.get("trial_id"):
            out.append(TrialRecord("", {k: v for k, v in (result.config or {}).items() if k in params}, (), last,
                                   error=result.error is not None))
            continue
        rows = result.metrics_dataframe
        rows = rows.to_dict("records") if rows is not None else []
        out.append(_record(last, result.config or {}, rows, metric, params, error=result.error is not None))
    return out


def records_of_experiment(experiment: Path, metric: str, params: list[str]) -> list[TrialRecord]:
    """One record per trial that reported, read back from a finished Tune experiment folder (local)."""
    from ray.tune import ExperimentAnalysis  # reading Tune's records needs Ray Tune, not a cluster

    out = []
    for trial in ExperimentAnalysis(str(experiment)).trials:
        rows = _result_rows(Path(trial.path) / "result.json") if trial.path else []
        if not rows:
            continue
        last = dict(rows[-1])
        out.append(_record({"trial_id": trial.trial_id, **last}, trial.config or {}, rows, metric, params,
                           error=trial.status == "ERROR"))
    return out


def _result_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(last: dict, config: dict, rows: list[dict], metric: str, params: list[str], error: bool) -> TrialRecord:
    reports = sorted((Report(float(row["kimg"]), float(row[metric]), float(row.get("time_total_s") or 0.0))
                      for row in rows if _number(row.get(metric)) and _finite(row.get("kimg"))),
                     key=lambda r: (r.kimg, r.seconds))
    return TrialRecord(trial_id=str(last["trial_id"]), params={k: config[k] for k in params if k in config},
                       reports=tuple(reports), last=last, error=error)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)
