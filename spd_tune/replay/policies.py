"""The stopping policies the replay compares, by name. Each is the decision code a search runs, built as the
search builds it (Ray Tune's scheduler objects, or the project's own), so the replay measures what users run.

- ``none``: no early stopping (Tune's FIFO scheduler);
- ``asha``: the space's own ASHA (search/schedulers.py's PersistentASHA, as the search builds it: one bracket,
  its grace and reduction factor);
- ``asha_3brackets``: the same with 3 brackets (Ray's asynchronous Hyperband; a bracket's first rung is grace x
  rf^s, and a trial joins a bracket at random, weighted towards those with more rungs);
- ``hyperband``: asynchronous Hyperband with every bracket the rungs allow (s_max + 1). Ray's synchronous
  HyperBandScheduler pauses trials and restarts them, which a search of Train runs does not do;
- ``median``: Ray's median stopping rule (a trial stops when its best score is worse than the median of the other
  trials' running means at the same kimg; from the grace on, with at least 3 others);
- ``asha_late_grace``: ASHA with the next rung as its grace (the first rung dropped);
- ``gated``: search/schedulers.py's GatedASHA with the space's ``search.gate`` (defaults: the first trial and
  one in every 3 run to the end; a rung stops trials only once the lower 95% bound of its agreement with the
  highest fidelity reached exceeds 0.3).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule, TrialScheduler

from ..errors import ConfigError
from ..search.schedulers import GatedASHA, PersistentASHA
from ..search.space import GateConfig

POLICIES = ("none", "asha", "asha_3brackets", "hyperband", "median", "asha_late_grace", "gated")


def _asha(search: dict, max_kimg: float, metric: str, brackets: int = 1, grace: float | None = None):
    a = search["asha"]
    return PersistentASHA(None, time_attr="kimg", metric=metric, mode="min", max_t=max_kimg,
                          grace_period=grace or a["grace_kimg"], reduction_factor=a["reduction_factor"],
                          brackets=brackets)


def _s_max(search: dict, max_kimg: float) -> int:
    a = search["asha"]
    return int(math.floor(math.log(max_kimg / a["grace_kimg"]) / math.log(a["reduction_factor"]) + 1e-9))


def _late_grace(search: dict, max_kimg: float, metric: str):
    a = search["asha"]
    later = a["grace_kimg"] * a["reduction_factor"]
    return _asha(search, max_kimg, metric, grace=later if later < max_kimg - 1e-9 else a["grace_kimg"])


BUILDERS: dict[str, Callable[[dict, float, str], TrialScheduler]] = {
    "none": lambda search, max_kimg, metric: FIFOScheduler(),
    "asha": lambda search, max_kimg, metric: _asha(search, max_kimg, metric),
    "asha_3brackets": lambda search, max_kimg, metric: _asha(search, max_kimg, metric,
                                                             brackets=min(3, _s_max(search, max_kimg) + 1)),
    "hyperband": lambda search, max_kimg, metric: _asha(search, max_kimg, metric,
                                                        brackets=_s_max(search, max_kimg) + 1),
    "median": lambda search, max_kimg, metric: MedianStoppingRule(
        time_attr="kimg", metric=metric, mode="min", grace_period=search["asha"]["grace_kimg"],
        min_samples_required=3),
    "asha_late_grace": _late_grace,
    "gated": lambda search, max_kimg, metric: _gated(search, max_kimg, metric),
}


def _gated(search: dict, max_kimg: float, metric: str) -> GatedASHA:
    """The space's gate as recorded in the table (search.gate), with GateConfig's defaults for what it lacks."""
    gate = {**{f.name: f.default for f in dataclasses.fields(GateConfig)}, **(search.get("gate") or {})}
    return GatedASHA(None, metric=metric, max_t=max_kimg, grace_period=search["asha"]["grace_kimg"],
                     reduction_factor=search["asha"]["reduction_factor"], anchor_every=gate["anchor_every"],
                     anchor_every_open=gate["anchor_every_open"],
                     threshold=gate["threshold"], min_pairs=gate["min_pairs"])


def build(name: str, search: dict, max_kimg: float, metric: str) -> TrialScheduler:
    if name not in BUILDERS:
        raise ConfigError(f"unknown policy {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name](search, max_kimg, metric)
