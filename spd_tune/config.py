"""One typed, frozen configuration per training run, loaded from YAML/JSON and validated once.

A config file is either a search space (its ``train:`` section is the fixed training config) or a plain
training config. ``--set a.b=value`` overrides any field; values are parsed as YAML. Unknown keys and
wrong types are errors that name the key, the value and what is allowed. Paths become absolute here:
Ray Train workers change directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataConfig
from .schedule import ProcessConfig
from .unet import PRESETS, UNetConfig

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


MAX_BATCH = 65536


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


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
            return dataclasses.replace(PRESETS[self.preset], **{"image_size": image_size, **self.overrides})
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
    rate: float = 0.9999
    warmup: bool = True  # rate_n = min(rate, (1 + n) / (10 + n)): short runs are not stuck near the init

    def __post_init__(self) -> None:
        if not 0 <= self.rate < 1:
            raise ConfigError(f"ema.rate={self.rate} must be in [0, 1)")


@dataclass(frozen=True)
class FeaturesConfig:
    dims: int = 2048
    weights: str = "pytorch-fid"  # or "random": the offline proxy
    weights_path: str | None = None

    def __post_init__(self) -> None:
        if self.dims not in (64, 192, 768, 2048):
            raise ConfigError(f"eval.features.dims={self.dims} must be one of 64, 192, 768, 2048")
        if self.weights not in ("pytorch-fid", "random"):
            raise ConfigError(f"eval.features.weights={self.weights!r} must be 'pytorch-fid' or 'random'")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol: N samples with a fixed respaced sampler and seeds, against N_ref references."""

    every_kimg: float = 50.0
    at_kimg: tuple[float, ...] = ()  # extra evaluation points (the search puts its ASHA rungs here)
    samples: int = 1024
    sampler: str = "ancestral"
    sampler_steps: int | None = 100
    eta: float = 0.0
    seed: int = 1_000_000  # sample i uses seed + i
    ref_split: str = "train"
    ref_count: int | None = None  # default: the whole split
    ref_seed: int = 1  # demo data only: disjoint from training (seed 0)
    features: FeaturesConfig = FeaturesConfig()
    grid: int = 64  # images in the sample grid PNG

    def __post_init__(self) -> None:
        if self.every_kimg <= 0 or any(k <= 0 for k in self.at_kimg):
            raise ConfigError("eval.every_kimg and eval.at_kimg must be > 0")
        if self.samples < 2:
            raise ConfigError(f"eval.samples={self.samples} must be >= 2 (a covariance needs two)")
        if self.sampler not in ("ancestral", "ddim"):
            raise ConfigError(f"eval.sampler={self.sampler!r} must be 'ancestral' or 'ddim'")


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
        from .cluster import worker_resources

        return worker_resources(self.cpus_per_worker, self.gpus_per_worker, self.custom)

    def per_run(self) -> dict[str, float]:
        return {key: amount * self.workers for key, amount in self.per_worker().items()}


@dataclass(frozen=True)
class FaultsConfig:
    """Fault injection for reliability tests (docs/reliability.md): leave unset in real runs."""

    nan_loss_at_kimg: float | None = None  # the loss turns NaN from here on: a diverging run
    checkpoint_write_error_at_kimg: float | None = None  # from here on the checkpoint writer fails ...
    checkpoint_write_error: str = "ENOSPC"  # ... with a full disk part-way (ENOSPC) or a read-only folder (EROFS)

    def __post_init__(self) -> None:
        if self.checkpoint_write_error not in ("ENOSPC", "EROFS"):
            raise ConfigError(f"faults.checkpoint_write_error={self.checkpoint_write_error!r} must be ENOSPC or EROFS")
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
    precision: str = "auto"  # auto: bf16 autocast on GPUs, fp32 on CPUs; or "fp32" / "bf16"
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
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision={self.precision!r} must be 'auto', 'fp32' or 'bf16'")
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be >= 1")
        self.unet  # validates the model against the image size

    @property
    def unet(self) -> UNetConfig:
        return self.model.unet(self.data.image_size)

    @property
    def per_worker_batch(self) -> int:
        return self.batch // (self.resources.workers * self.accumulation)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# --- building dataclasses from plain dicts ---------------------------------------------------------

def did_you_mean(key: str, known) -> str:
    names = [str(k) for k in known]
    # a prefix (``grace`` for ``grace_kimg``) or a close spelling; 0.65 keeps ``extra`` from suggesting ``train``
    close = [n for n in names if n.startswith(str(key))] or difflib.get_close_matches(str(key), names, n=1,
                                                                                      cutoff=0.65)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(data: dict, known, where: str = "") -> None:
    """Every key must be one of ``known``: a typo is an error naming the key, a close match and the choices."""
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        hints = "".join(did_you_mean(k, known) for k in unknown[:1])
        raise ConfigError(f"unknown key(s) {[f'{where}{k}' for k in unknown]}{hints}; allowed under "
                          f"{where.rstrip('.') or 'the top level'}: {sorted(known)}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build a (nested) frozen dataclass, rejecting unknown keys and wrong types with the key's path."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_known_keys(data, fields, where)
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}={value!r} matches none of {options}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{where}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 2e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    return value


# --- files and overrides ------------------------------------------------------------------------------

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


def read_document(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text()
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return doc


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """--set a.b.c=value (YAML-parsed) into a nested dict, copying what it touches."""
    import yaml

    doc = json.loads(json.dumps(doc))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} must look like key=value (e.g. optim.lr=2e-4)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: cannot parse the value") from None
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return doc


def load_train_config(name_or_path: str, overrides: list[str] = (), **top_level: Any) -> TrainConfig:
    """The training config of a search space or config file, with --set overrides and CLI values applied."""
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
    cfg = from_dict(TrainConfig, train)
    return absolute_paths(cfg)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    def absolute(p: str | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    data = dataclasses.replace(cfg.data, root=absolute(cfg.data.root), cache_dir=absolute(cfg.data.cache_dir))
    features = dataclasses.replace(cfg.eval.features, weights_path=absolute(cfg.eval.features.weights_path))
    return dataclasses.replace(cfg, data=data, output=absolute(cfg.output),
                               eval=dataclasses.replace(cfg.eval, features=features))
