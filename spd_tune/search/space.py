"""The search section of a space file: what is searched, how trials are scheduled, what is scored.

    search:
      trials: 8
      params:                       # flat names, as they appear in MLflow and Optuna
        m:  {path: process.m, type: float, low: 1.5, high: 3.5}
        T:  {path: process.steps, type: int, low: 100, high: 400, log: true}
        lr: {path: optim.lr, type: float, low: 5.0e-4, high: 5.0e-3, log: true}
      asha: {grace_kimg: 2, reduction_factor: 2, max_kimg: 8}

Every error names the key, the value and what is allowed, and is raised before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.samplers import SAMPLERS, SamplerConfig
from ..core.spectrum import BANDS, ESTIMATORS
from ..errors import ConfigError
from ..train.config import SamplerKind, TrainConfig, absolute_paths, expected_metric_name, resolve_config_path
from ..typed import apply_overrides, check_known_keys, from_dict, read_document
from .fit import FIT_PATHS

PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class ParamSpec:
    path: str  # dotted key of the training config
    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    around: str | None = None  # "fit": centred on the training data's spectrum fit (search/fit.py)
    width: float | None = None  # with around: the half-width (in ln units when log)
    estimator: str | None = None  # with around: fit: the fit's estimator (default whittle; core/spectrum.ESTIMATORS)
    band: Any = None  # with around: fit: low | mid | high | all, or [lo, hi] in cycles per image (default low)
    widen: bool = True  # with around: fit on m: widen fit ± width to every estimator's m and the paper's 2.0

    def validate(self, name: str) -> None:
        where = f"search.params.{name}"
        if self.type not in PARAM_TYPES:
            raise ConfigError(f"{where}.type={self.type!r} must be one of {list(PARAM_TYPES)}")
        if self.around is None and (self.estimator is not None or self.band is not None or self.widen is not True):
            raise ConfigError(f"{where}: estimator, band and widen belong to around: fit")
        if self.around is not None or self.width is not None:
            self.validate_around(where)
            if self.low is None:  # not resolved yet: the range comes from the fit
                return
        if self.type == "categorical":
            if len(self.choices) < 1:
                raise ConfigError(f"{where}.choices must list at least one value")
            return
        if self.low is None or self.high is None:
            raise ConfigError(f"{where} needs low and high for a {self.type} parameter")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(f"{where}: the range [{self.low}, {self.high}] is empty or inverted (need low < high)")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got low={self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ConfigError(f"{where}: an int range needs integer bounds, got [{self.low}, {self.high}]")

    def validate_around(self, where: str) -> None:
        if self.around != "fit":
            raise ConfigError(f"{where}.around={self.around!r}: the only centre is 'fit' (the data's spectrum fit)")
        if self.path not in FIT_PATHS:
            raise ConfigError(f"{where}: around: fit centres {' or '.join(FIT_PATHS)}, not {self.path}")
        if self.type != "float":
            raise ConfigError(f"{where}: around: fit needs type: float, got {self.type!r}")
        if self.width is None or not isinstance(self.width, (int, float)) or not math.isfinite(self.width) \
                or self.width <= 0:
            raise ConfigError(f"{where}.width={self.width!r} must be a positive number (the range is fit ± width"
                              f"{', in ln units' if self.log else ''})")
        if self.estimator is not None and self.estimator not in ESTIMATORS:
            raise ConfigError(f"{where}.estimator={self.estimator!r} must be one of {list(ESTIMATORS)}")
        band = self.band
        named = isinstance(band, str) and band in BANDS
        pair = isinstance(band, (list, tuple)) and len(band) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in band) \
            and 0 <= band[0] < band[1]
        if band is not None and not (named or pair):
            raise ConfigError(f"{where}.band={band!r} must be one of {list(BANDS)} or [lo, hi] with 0 <= lo < hi "
                              "(cycles per image)")
        if not isinstance(self.widen, bool):
            raise ConfigError(f"{where}.widen={self.widen!r} must be true or false")

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

@dataclass(frozen=True)
class ASHAConfig:
    grace_kimg: float = 1.0  # first rung
    reduction_factor: float = 2.0
    max_kimg: float | None = None  # default: train.total_kimg

    def __post_init__(self) -> None:
        if self.grace_kimg <= 0 or self.reduction_factor <= 1:
            raise ConfigError("search.asha needs grace_kimg > 0 and reduction_factor > 1")


@dataclass(frozen=True)
class FinalConfig:
    """After the search: re-score the top_k trials' best checkpoints with a larger protocol (e.g. 50k samples
    at full T) and pick the champion by that score. top_k = 0 keeps the rung metric's winner.

    Each finalist is scored on ``seeds`` disjoint sets of ``samples`` images (set s: seeds seed + s * samples + i,
    as EDM scores three seed ranges): its result is the mean, the standard deviation and the values."""

    top_k: int = 0
    samples: int = 50_000
    seeds: int = 3
    sampler: SamplerKind | None = None  # default: the rung protocol's
    sampler_steps: int | None = None  # None: all T steps (the paper's protocol)
    eta: float = 0.0
    seed: int = 2_000_000

    def __post_init__(self) -> None:
        if self.top_k < 0 or self.samples < 2:
            raise ConfigError("search.final needs top_k >= 0 and samples >= 2")
        if self.seeds < 1:
            raise ConfigError(f"search.final.seeds={self.seeds} must be >= 1 (sets of samples scored per finalist)")

    def sampler_config(self, rung_sampler: str) -> SamplerConfig:
        """The final protocol's sampler: its own kind (default the rung protocol's ``rung_sampler``), K (None:
        all T) and eta where it applies."""
        return SamplerConfig.of(self.sampler or rung_sampler, steps=self.sampler_steps, eta=self.eta)

    def seed_sets(self) -> list[int]:
        """The first seed of each set: disjoint ranges of ``samples`` seeds."""
        return [self.seed + s * self.samples for s in range(self.seeds)]


@dataclass(frozen=True)
class PosthocConfig:
    """After the ASHA phase: per finalist, a small seeded Optuna study over what needs no training (the EMA width,
    the sampler, K and eta), evaluated on the finalist's trained weights (docs/search.md)."""

    enabled: bool = False
    evaluations: int = 8  # per finalist
    batch: int = 4  # asked and told together, in trial order: the same seeds give the same post-hoc trials
    samplers: tuple[SamplerKind, ...] = SAMPLERS
    k_min: int = 10  # K in [k_min, min(T, k_max)], log scale
    k_max: int | None = None
    eta: tuple[float, float] = (0.0, 1.0)  # DDIM's eta range
    sigma_rel: tuple[float, float] | None = None  # the EMA width range (power EMA only); None: the rung profile
    samples: int | None = None  # default: the rung protocol's eval.samples and eval.seed
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.evaluations < 1 or self.batch < 1:
            raise ConfigError(f"search.posthoc needs evaluations >= 1 and batch >= 1 (got {self.evaluations}, "
                              f"{self.batch})")
        if not self.samplers or len(set(self.samplers)) != len(self.samplers):
            raise ConfigError(f"search.posthoc.samplers={list(self.samplers)} must name "
                              f"{' and/or '.join(map(repr, SAMPLERS))} once each")
        if self.k_min < 1 or (self.k_max is not None and self.k_max < self.k_min):
            raise ConfigError(f"search.posthoc needs 1 <= k_min <= k_max (got {self.k_min}, {self.k_max})")
        lo, hi = self.eta
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"search.posthoc.eta={list(self.eta)} must be a range within [0, 1]")
        if self.sigma_rel is not None and not 0 < self.sigma_rel[0] < self.sigma_rel[1] < math.sqrt(1 / 12):
            raise ConfigError(f"search.posthoc.sigma_rel={list(self.sigma_rel)} must be a range (low < high) "
                              f"within (0, {math.sqrt(1 / 12):.4f})")
        if self.samples is not None and self.samples < 2:
            raise ConfigError(f"search.posthoc.samples={self.samples} must be >= 2 (a covariance needs two)")


@dataclass(frozen=True)
class GateConfig:
    """Rank-gated stopping with full-length anchors (search/schedulers.py, GatedASHA; docs/search.md)."""

    enabled: bool = True
    anchor_every: int = 3  # the first trial and every anchor_every-th after it run to max_kimg
    anchor_every_open: int = 9  # the anchors' spacing while every rung's gate is open
    threshold: float = 0.3  # a rung stops trials once the lower 95% bound of its rank agreement exceeds this
    min_pairs: int = 4  # trials that reached both the rung and the fidelity it is compared with

    def __post_init__(self) -> None:
        if self.anchor_every < 1:
            raise ConfigError(f"search.gate.anchor_every={self.anchor_every} must be >= 1 (1: every trial runs to "
                              "max_kimg)")
        if self.anchor_every_open < self.anchor_every:
            raise ConfigError(f"search.gate.anchor_every_open={self.anchor_every_open} must be >= anchor_every="
                              f"{self.anchor_every} (anchors are never denser once the rungs are trusted)")
        if not -1.0 <= self.threshold < 1.0:
            raise ConfigError(f"search.gate.threshold={self.threshold} must be in [-1, 1) (a Spearman correlation)")
        if self.min_pairs < 4:
            raise ConfigError(f"search.gate.min_pairs={self.min_pairs} must be >= 4 (a bound needs 4 pairs)")

    def anchors(self, trials: int) -> int:
        """How many of ``trials`` are anchors at most (fewer once every gate opens: anchor_every_open)."""
        return -(-trials // self.anchor_every)


@dataclass(frozen=True)
class MultiObjectiveConfig:
    """Search the score against sampling cost (NFE) as a Pareto front."""

    enabled: bool = False
    nfe_budget: int | None = None  # the champion is the best-score point with at most this many NFE


@dataclass(frozen=True)
class SearchConfig:
    params: dict = field(default_factory=dict)  # name -> ParamSpec
    trials: int = 8
    max_concurrent: int | None = None  # default: what the cluster fits
    seed: int = 0
    startup_trials: int = 3  # random trials before TPE
    time_budget_s: float | None = None
    budget_hours: float | None = None  # resource-hours (GPU, or CPU without GPUs): no new trial once it would exceed
    enqueue_defaults: bool = True  # the training config's own values (the paper's point) are the first trial
    asha: ASHAConfig = ASHAConfig()
    gate: GateConfig = GateConfig()
    final: FinalConfig = FinalConfig()
    posthoc: PosthocConfig = PosthocConfig()
    multi_objective: MultiObjectiveConfig = MultiObjectiveConfig()

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"search.trials={self.trials} must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"search.max_concurrent={self.max_concurrent} must be >= 1")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError("search.time_budget_s must be > 0")
        if self.budget_hours is not None and not (math.isfinite(self.budget_hours) and self.budget_hours > 0):
            raise ConfigError(f"search.budget_hours={self.budget_hours} must be a number of hours > 0")
        if not self.params:
            raise ConfigError("search.params must name at least one parameter")


@dataclass(frozen=True)
class Space:
    train: TrainConfig
    search: SearchConfig
    metric: str  # the evaluation metric's name (fid, or the proxy's)
    fit: dict | None = None  # the data's spectrum fit and the ranges centred on it (params with around: fit)

    @property
    def max_kimg(self) -> float:
        return self.search.asha.max_kimg or self.train.total_kimg

    def rungs(self) -> list[float]:
        """ASHA's milestones (geometric from grace_kimg), where every trial evaluates and checkpoints."""
        a, out, k = self.search.asha, [], self.search.asha.grace_kimg
        while k < self.max_kimg - 1e-9:
            out.append(round(k, 6))
            k *= a.reduction_factor
        return out + [self.max_kimg]

    def default_point(self) -> dict:
        """The training config's own values of the searched parameters (the paper's configuration)."""
        return {name: self.value_at(spec.path) for name, spec in self.search.params.items()}

    def value_at(self, path: str) -> Any:
        """A training-config value by dotted path; model.overrides.<field> falls back to the preset's value."""
        prefix = "model.overrides."
        if path.startswith(prefix) and path[len(prefix):] not in self.train.model.overrides:
            return getattr(self.train.unet, path[len(prefix):])
        node: Any = self.train.to_dict()
        for part in path.split("."):
            node = node[part]
        return node

    def trial_config(self, params: dict) -> TrainConfig:
        """The training config of one trial: the fixed config with the sampled values set."""
        overrides = [f"{self.search.params[name].path}={json.dumps(value)}" for name, value in params.items()]
        doc = apply_overrides(self.train.to_dict(), overrides)
        return from_dict(TrainConfig, doc)


def load_space(name_or_path: str, overrides: list[str] = (), output: str | None = None) -> Space:
    """Parse and validate a whole space file; nothing starts before this passes."""
    path = resolve_config_path(name_or_path)
    doc = read_document(path)
    try:
        check_known_keys(doc, ("search", "train"))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if "search" not in doc:
        raise ConfigError(f"{path} has no search section")
    doc = apply_overrides(doc, list(overrides))
    check_known_keys(doc, ("search", "train"))  # an override may name a new top-level key: a typo too
    train_doc = dict(doc.get("train") or {})
    if output is not None:
        train_doc["output"] = output
    train_doc.setdefault("name", path.stem)
    train = absolute_paths(from_dict(TrainConfig, train_doc, "train."))
    search_doc = dict(doc["search"] or {})
    raw_params = search_doc.pop("params", None) or {}
    if not isinstance(raw_params, dict):
        raise ConfigError("search.params must be a mapping of name -> {path, type, ...}")
    params = {}
    for name, spec in raw_params.items():
        p = from_dict(ParamSpec, spec, f"search.params.{name}.")
        if p.around is not None and (p.low is not None or p.high is not None):
            raise ConfigError(f"search.params.{name}: give either around: fit with a width, or low and high")
        p.validate(name)
        params[name] = p
    search = from_dict(SearchConfig, {**search_doc, "params": params}, "search.")
    from .fit import centre_on_fit  # reads the training data: only after every cheap check has passed

    train, params, fit = centre_on_fit(train, params)
    for name, p in params.items():
        p.validate(name)
    search = dataclasses.replace(search, params=params)
    space = Space(train, search, metric="", fit=fit)
    for name, spec in params.items():  # each path must exist and every value in range must give a valid config
        try:
            value = space.value_at(spec.path)
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"search.params.{name}.path={spec.path!r} is not a field of the training config") from None
        for probe in _probes(spec):
            try:
                space.trial_config({name: probe})
            except ConfigError as err:
                raise ConfigError(f"search.params.{name}: the value {probe!r} gives an invalid config: {err}") from None
        if search.enqueue_defaults and not spec.contains(value):
            raise ConfigError(f"search.params.{name}: the training config's value {value!r} (the first trial) is "
                              f"outside the searched range; widen the range or set search.enqueue_defaults: false")
    if search.asha.max_kimg is not None and search.asha.max_kimg > train.total_kimg:
        raise ConfigError(f"search.asha.max_kimg={search.asha.max_kimg} exceeds train.total_kimg={train.total_kimg}")
    check_posthoc(space)
    check_seeds_disjoint(space)
    train = dataclasses.replace(train, total_kimg=space.max_kimg,
                                eval=dataclasses.replace(train.eval, at_kimg=tuple(space.rungs())))
    return dataclasses.replace(space, train=train, metric=expected_metric_name(train))


def steps_range(space: Space) -> tuple[int, int]:
    """The smallest and the largest T any trial of the space can have."""
    for spec in space.search.params.values():
        if spec.path == "process.steps":
            if spec.type == "categorical":
                return int(min(spec.choices)), int(max(spec.choices))
            return int(spec.low), int(spec.high)
    return space.train.process.steps, space.train.process.steps


def lowest_steps(space: Space) -> int:
    """The smallest T any trial of the space can have."""
    return steps_range(space)[0]


def check_posthoc(space: Space) -> None:
    """What a post-hoc section asks must be possible for every trial the space allows."""
    ph = space.search.posthoc
    if not ph.enabled:
        return
    t_min = lowest_steps(space)
    if ph.k_min > t_min:
        raise ConfigError(f"search.posthoc.k_min={ph.k_min} is above the lowest T the space allows ({t_min}): "
                          "K can never exceed T")
    if ph.sigma_rel is not None:
        searched_kind = any(spec.path == "ema.kind" for spec in space.search.params.values())
        if space.train.ema.kind != "power" or searched_kind:
            raise ConfigError("search.posthoc.sigma_rel searches the EMA width, which needs train.ema.kind: power "
                              "in every trial (set it, or set search.posthoc.sigma_rel: null)")
    if space.search.final.top_k < 1:
        raise ConfigError("search.posthoc needs search.final.top_k >= 1: the final protocol measures what the "
                          "post-hoc stage gained (or set search.posthoc.enabled: false)")


def posthoc_protocol(space: Space) -> tuple[int, int]:
    """(samples, first seed) of the post-hoc evaluations: the rung protocol's unless the section says otherwise."""
    ph, ev = space.search.posthoc, space.train.eval
    return ph.samples or ev.samples, ev.seed if ph.seed is None else ph.seed


def seed_ranges(space: Space) -> dict[str, range]:
    """The sample seeds each protocol uses: image i of a protocol with first seed s has seed s + i."""
    ev, f = space.train.eval, space.search.final
    ph_samples, ph_seed = posthoc_protocol(space)
    return {"train.eval": range(ev.seed, ev.seed + ev.samples),
            "search.posthoc": range(ph_seed, ph_seed + ph_samples),
            "search.final": range(f.seed, f.seed + f.seeds * f.samples)}


def check_seeds_disjoint(space: Space) -> None:
    """The final protocol must not reuse the seeds that trials and points were selected on: the gain would be
    inflated."""
    if not space.search.final.top_k:
        return
    ranges = seed_ranges(space)
    if not space.search.posthoc.enabled:
        ranges.pop("search.posthoc")
    final = ranges.pop("search.final")
    for name, other in ranges.items():
        if final.start < other.stop and other.start < final.stop:
            raise ConfigError(f"search.final.seed={final.start} with {len(final)} seeds reuses seeds of {name} "
                              f"({other.start}..{other.stop - 1}): the final protocol needs seeds the rungs and the "
                              "post-hoc stage never saw; move search.final.seed")


def _probes(spec: ParamSpec) -> list:
    if spec.type == "categorical":
        return list(spec.choices)
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


SPACE_FILE = "space.json"  # in a search's folder: what `python -m spd_tune.replay table` reads of its space


def space_record(space: Space) -> dict:
    """The space as a search ran it: its search section, metric, rungs and first point."""
    return {"name": space.train.name, "metric": space.metric, "max_kimg": space.max_kimg, "rungs": space.rungs(),
            "default_point": space.default_point(), "search": dataclasses.asdict(space.search)}
