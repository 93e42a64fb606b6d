"""One typed, frozen configuration per training run, loaded from YAML/JSON and validated once.

A config file is either a search space (its ``train:`` section is the fixed training config) or a plain
training config. ``--set a.b=value`` overrides any field (spd_tune.typed). Paths become absolute here, and the
data root, caches and FID weights are resolved here, once, on the driver: Ray Train workers change directory
and never read the environment again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..core.samplers import SamplerConfig, SamplerKind
from ..core.schedule import ProcessConfig
from ..core.unet import PRESETS, UNetConfig, preset_config
from ..data import DataConfig, dataset
from ..errors import ConfigError
from ..fid import FeatureSpec, default_cache_dir, metric_name, resolve_fid_weights
from ..typed import apply_overrides, check_known_keys, from_dict, read_document

SPACES_DIR = Path(__file__).resolve().parent.parent.parent / "search_spaces"
MAX_BATCH = 65536


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "cifar10"
    overrides: dict = field(default_factory=dict)  # any UNetConfig field

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"model.preset={self.preset!r} is not one of {sorted(PRESETS)}")

    def unet(self, image_size: int) -> UNetConfig:
        check_known_keys(self.overrides, {f.name for f in dataclasses.fields(UNetConfig)}, "model.overrides.")
        try:
            return preset_config(self.preset, **{"image_size": image_size, **self.overrides})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model: {err}") from None


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_kimg: float = 0.0  # linear lr warm-up
    grad_clip: float | None = None  # max global gradient norm

    def __post_init__(self) -> None:
        if not 0 < self.lr <= 1:
            raise ConfigError(f"optim.lr={self.lr} must be in (0, 1]")
        if self.weight_decay < 0 or self.warmup_kimg < 0:
            raise ConfigError("optim.weight_decay and optim.warmup_kimg must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"optim betas ({self.beta1}, {self.beta2}) must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip} must be > 0 (or null for none)")


@dataclass(frozen=True)
class EMAConfig:
    """How the evaluated (and exported) weights average the trained ones.

    ``rate``: the classic EMA of decay ``rate``. ``power``: EDM2's power-function averages of relative widths
    ``sigma_rels``, snapshotted every ``snapshot_kimg`` into the run's ``ema/`` folder, so that the post-hoc
    stage can rebuild any other width from them (core/ema.py); rungs and checkpoints use ``eval_sigma_rel``."""

    kind: Literal["rate", "power"] = "rate"
    rate: float = 0.9999
    warmup: bool = True  # rate_n = min(rate, (1 + n) / (10 + n)): short runs are not stuck near the init
    sigma_rels: tuple[float, ...] = (0.05, 0.10)  # EDM2's two stored profiles
    eval_sigma_rel: float = 0.10  # the profile rungs compare, one of sigma_rels: like with like across trials
    snapshot_kimg: float = 0.0  # 0: a snapshot at every evaluation

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise ConfigError(f"ema.rate={self.rate} must be in [0, 1)")
        limit = math.sqrt(1 / 12)
        if not self.sigma_rels or any(not 0 < s < limit for s in self.sigma_rels):
            raise ConfigError(f"ema.sigma_rels={list(self.sigma_rels)} must be one or more values in "
                              f"(0, {limit:.4f})")
        if len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ConfigError(f"ema.sigma_rels={list(self.sigma_rels)} repeats a value")
        if self.eval_sigma_rel not in self.sigma_rels:
            raise ConfigError(f"ema.eval_sigma_rel={self.eval_sigma_rel} must be one of ema.sigma_rels="
                              f"{list(self.sigma_rels)}: rungs evaluate a profile that training tracks")
        if self.snapshot_kimg < 0:
            raise ConfigError(f"ema.snapshot_kimg={self.snapshot_kimg} must be >= 0 (0: at every evaluation)")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol: N samples with a fixed respaced sampler and seeds, against N_ref references."""

    every_kimg: float = 50.0
    at_kimg: tuple[float, ...] = ()  # extra evaluation points (the search puts its ASHA rungs here)
    samples: int = 1024
    sampler: SamplerKind = "ancestral"
    sampler_steps: int | None = 100
    eta: float = 0.0
    seed: int = 1_000_000  # sample i uses seed + i
    ref_split: str = "train"
    ref_count: int | None = None  # default: the whole split
    ref_seed: int = 1  # demo data only: disjoint from training (seed 0)
    features: FeatureSpec = FeatureSpec()
    stats_cache_dir: str | None = None  # reference statistics (default: <data.cache_dir>/fid_stats or SPD_TUNE_CACHE)
    grid: int = 64  # images in the sample grid PNG

    def sampler_config(self) -> SamplerConfig:
        """The one sampler shape (core.samplers): this protocol's sampler, K and eta."""
        return SamplerConfig(self.sampler, steps=self.sampler_steps, eta=self.eta)

    def __post_init__(self) -> None:
        if self.every_kimg <= 0 or any(k <= 0 for k in self.at_kimg):
            raise ConfigError("eval.every_kimg and eval.at_kimg must be > 0")
        if self.samples < 2:
            raise ConfigError(f"eval.samples={self.samples} must be >= 2 (a covariance needs two)")
        try:
            self.sampler_config()
        except ValueError as err:
            raise ConfigError(f"eval: {err}") from None


@dataclass(frozen=True)
class ResourcesConfig:
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    custom: dict = field(default_factory=dict)  # extra Ray resources per worker, e.g. {"accelerator_type:A10G": 1}

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"resources.workers={self.workers} must be >= 1")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ConfigError("resources.gpus_per_worker and cpus_per_worker must be >= 0")
        for key, amount in self.custom.items():
            if key in ("CPU", "GPU", "memory") or isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                    or amount <= 0:
                raise ConfigError(f"resources.custom[{key!r}]={amount!r}: custom resources need a name other than "
                                  "CPU/GPU/memory and an amount > 0")

    def per_worker(self) -> dict[str, float]:
        from ..cluster import worker_resources  # spd_tune.cluster imports ray: kept off config loading and --dry-run

        return worker_resources(self.cpus_per_worker, self.gpus_per_worker, self.custom)

    def per_run(self) -> dict[str, float]:
        return {key: amount * self.workers for key, amount in self.per_worker().items()}


@dataclass(frozen=True)
class FaultsConfig:
    """Fault injection for reliability tests (docs/reliability.md): leave unset in real runs."""

    nan_loss_at_kimg: float | None = None  # the loss turns NaN from here on: a diverging run
    checkpoint_write_error_at_kimg: float | None = None  # from here on the checkpoint writer fails ...
    checkpoint_write_error: Literal["ENOSPC", "EROFS"] = "ENOSPC"  # ... a full disk part-way, or a read-only folder

    def __post_init__(self) -> None:
        for name in ("nan_loss_at_kimg", "checkpoint_write_error_at_kimg"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"faults.{name}={value} must be > 0 (or null)")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    process: ProcessConfig = ProcessConfig()
    optim: OptimConfig = OptimConfig()
    ema: EMAConfig = EMAConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    faults: FaultsConfig = FaultsConfig()
    batch: int = 128  # global batch: per-worker batch x workers x accumulation
    accumulation: int = 1
    total_kimg: float = 1000.0
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs, fp32 on CPUs; or "fp32" / "bf16"
    channels_last: bool | None = None  # default: on for GPUs
    compile: bool = False
    keep_checkpoints: int = 3  # best by the metric, plus always the latest
    max_failures: int = 3  # worker-group restarts from the last checkpoint
    log_every_s: float = 30.0
    output: str = "spd_runs"
    name: str | None = None  # run name (default: derived from the config file)

    def __post_init__(self) -> None:
        if self.batch < 1 or self.accumulation < 1:
            raise ConfigError(f"batch={self.batch} and accumulation={self.accumulation} must be >= 1")
        if self.batch > MAX_BATCH:
            raise ConfigError(f"batch={self.batch} is beyond {MAX_BATCH} images per step")
        per_step = self.resources.workers * self.accumulation
        if self.batch % per_step:
            raise ConfigError(f"batch={self.batch} must be divisible by workers x accumulation = {per_step}")
        if self.total_kimg <= 0:
            raise ConfigError(f"total_kimg={self.total_kimg} must be > 0")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be >= 1")
        self.unet  # validates the model against the image size

    @property
    def unet(self) -> UNetConfig:
        return self.model.unet(self.data.image_size)

    @property
    def per_worker_batch(self) -> int:
        return self.batch // (self.resources.workers * self.accumulation)

    # progress is counted in images (kimg), so a run means the same on any number of workers
    def total_steps(self) -> int:
        return math.ceil(self.total_kimg * 1000 / self.batch - 1e-9)

    def kimg_at(self, step: int) -> float:
        return step * self.batch / 1000

    def evaluation_steps(self) -> list[int]:
        """The steps after which the run evaluates, checkpoints and reports: every M kimg, the extra points
        (ASHA rungs) and the end. A point between two steps goes to the first step that reaches it."""
        total = self.total_steps()
        points = {self.total_kimg, *self.eval.at_kimg}
        k = self.eval.every_kimg
        while k < self.total_kimg - 1e-9:
            points.add(k)
            k += self.eval.every_kimg
        return sorted({min(total, math.ceil(p * 1000 / self.batch - 1e-9)) for p in points if p <= self.total_kimg})

    def snapshot_steps(self) -> list[int]:
        """The steps after which a power-EMA run stores its profiles' snapshots: every ``ema.snapshot_kimg``
        (or at every evaluation) and always at the end, where the post-hoc stage reconstructs."""
        if self.ema.kind != "power":
            return []
        if not self.ema.snapshot_kimg:
            return self.evaluation_steps()
        total = self.total_steps()
        every = max(1, round(self.ema.snapshot_kimg * 1000 / self.batch))
        return sorted({*range(every, total + 1, every), total})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def nimg(kimg: float) -> int:
    """Training images seen (EDM's nimg): the integer step of MLflow curves and Optuna's intermediate values."""
    return int(round(float(kimg) * 1000))


# --- files ----------------------------------------------------------------------------------------------

def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the name of a shipped search space (search_spaces/<name>.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    shipped = SPACES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    raise ConfigError(f"{name_or_path!r} is neither a config file nor a shipped search space ({', '.join(names)})")


def load_train_config(name_or_path: str, overrides: list[str] = (), default_output: str | None = None,
                      **top_level: Any) -> TrainConfig:
    """The training config of a search space or config file, with --set overrides and CLI values applied;
    ``default_output`` replaces the config's default output folder when neither the file nor a value sets one."""
    path = resolve_config_path(name_or_path)
    doc = read_document(path)
    is_space = "train" in doc or "search" in doc
    if is_space:
        check_known_keys(doc, ("search", "train"))
    train = doc.get("train", doc) if is_space else doc
    if "search" in doc and "train" not in doc:
        raise ConfigError(f"{path} has a search section but no train section")
    train = apply_overrides(train, list(overrides))
    for key, value in top_level.items():
        if value is not None:
            train = apply_overrides(train, [f"{key}={json.dumps(value)}"])
    train.setdefault("name", path.stem)
    if default_output is not None:
        train.setdefault("output", default_output)
    cfg = from_dict(TrainConfig, train)
    return absolute_paths(cfg)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    def absolute(p: str | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    data = dataclasses.replace(cfg.data, root=absolute(cfg.data.root), cache_dir=absolute(cfg.data.cache_dir))
    features = dataclasses.replace(cfg.eval.features, weights_path=absolute(cfg.eval.features.weights_path))
    return dataclasses.replace(cfg, data=data, output=absolute(cfg.output), eval=dataclasses.replace(
        cfg.eval, features=features, stats_cache_dir=absolute(cfg.eval.stats_cache_dir)))


def expected_metric_name(cfg: TrainConfig) -> str:
    """The metric's name from the config alone (no file is read): what the space promises to optimise. A data set
    with a metric of its own (the gaussian set's exact gauss_fd, fid/spectral.py) is scored by it, whatever the
    features say."""
    own = dataset(cfg.data.name).metric
    if own:
        return own
    f = cfg.eval.features
    return metric_name(f.dims, f.weights == "pytorch-fid")


def resolve_on_driver(cfg: TrainConfig) -> TrainConfig:
    """What the environment decides (SPD_TUNE_DATA, SPD_TUNE_CACHE, SPD_TUNE_FID_WEIGHTS, the torch hub cache),
    decided once, on the driver, and written into the config: workers on other machines never read it again.
    Finding the FID weights may download them; absent or wrong weights fail here."""

    data, ev = cfg.data, cfg.eval
    spec = dataset(data.name)
    if spec.default_root is not None and data.root is None:
        data = dataclasses.replace(data, root=str(spec.default_root().expanduser().resolve()))
    stats = ev.stats_cache_dir or (f"{data.cache_dir}/fid_stats" if data.cache_dir else str(default_cache_dir()))
    features = ev.features
    if features.weights == "pytorch-fid" and features.weights_path is None and spec.metric is None:
        weights = resolve_fid_weights(None, download=features.download)
        features = dataclasses.replace(features, weights_path=str(weights.path))
    return dataclasses.replace(cfg, data=data, eval=dataclasses.replace(ev, features=features, stats_cache_dir=stats))
