"""Stage 1, finalists: the trials the rest of the conclusion looks at again.

The top ``search.final.top_k`` trials by rung score (at least one; in multi-objective mode the trials' NFE front
within the budget), then the baseline, the space's own point, when the rungs did not put it among them: the
champion is always stated against the paper's configuration. A trial is a finalist only if it left a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ...train.config import TrainConfig
from ..results import ranked_trials
from ..space import Space
from ..trials import TrialRecord

# (Train run folder, metric) -> the run's best ray.train.Checkpoint, or None (train/driver.py's best_checkpoint)
FindCheckpoint = Callable[[str, str], object]


@dataclass(frozen=True)
class Finalist:
    trial_id: str
    score: float  # its best rung score
    params: Mapping
    cfg: TrainConfig  # the trial's training config
    run_path: str  # its Train run folder: local, a shared mount or a bucket
    checkpoint: object  # its best ray.train.Checkpoint (the weights a point without an EMA width uses)
    baseline: bool = False  # the space's first trial (its own config's point): a finalist whatever its rung score

    @property
    def power(self) -> bool:
        return self.cfg.ema.kind == "power"


@dataclass(frozen=True)
class Finalists:
    records: tuple[TrialRecord, ...]  # every trial, as trials.py read them from Tune
    chosen: tuple[Finalist, ...]  # best rung score first, then the baseline
    run_paths: Mapping[str, str]  # trial id -> its Train run folder, for every trial that reported


def baseline_trial(space: Space, records: tuple[TrialRecord, ...]) -> str | None:
    """The trial of the space's own point (enqueued first: the paper's configuration), if the space enqueues it
    and the final protocol runs."""
    if not (space.search.enqueue_defaults and space.search.final.top_k):
        return None
    point = space.default_point()
    for record in records:
        if record.trial_id and {k: record.params.get(k) for k in point} == point:
            return record.trial_id
    return None


def select(space: Space, records: list[TrialRecord], under_storage: Callable[[str], str],
           find_checkpoint: FindCheckpoint) -> Finalists:
    """The finalists of a finished search; ``under_storage`` maps a Train run's name to its folder."""
    records = tuple(records)
    baseline = baseline_trial(space, records)
    ranked = ranked_trials(space, list(records))
    picked = ranked[: max(1, space.search.final.top_k)]
    picked += [(score, r) for score, r in ranked[len(picked):] if r.trial_id == baseline]
    chosen = []
    for score, record in picked:
        run_path = under_storage(record.run_name)
        checkpoint = find_checkpoint(run_path, space.metric)
        if checkpoint is not None:  # local or in a bucket: read through its own filesystem
            params = {k: record.params[k] for k in space.search.params}
            chosen.append(Finalist(record.trial_id, score, params, space.trial_config(params), run_path, checkpoint,
                                   baseline=record.trial_id == baseline))
    run_paths = {r.trial_id: under_storage(r.run_name) for r in records if r.trial_id}
    return Finalists(records, tuple(chosen), run_paths)
