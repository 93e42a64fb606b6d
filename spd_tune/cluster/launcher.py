"""Offline checks of a Ray cluster-launcher YAML: ``python -m spd_tune.cluster_config cluster/gpu.yaml``.

Ray's own schema and defaults filling (what ``ray up`` runs before it needs cloud credentials), then what Ray
does not catch but a spd-tune cluster needs (docs/cluster.md): explicit node types with a GPU worker type,
per-type limits within the global one, a head that advertises ``train_driver``, an image whose Ray and Python
versions match this machine's, a GCP project id. Placeholders (YOUR-...) are listed, not rejected: the
shipped files keep them until the user fills them in.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import Parser
from ..errors import ConfigError

DRIVER_RESOURCE = "train_driver"  # the head's custom resource: trial drivers stay off spot GPU workers
PLACEHOLDER = re.compile(r"YOUR-[A-Z0-9-]+")


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class ClusterSpec:
    """What a checked cluster config offers: its node types and the most of each resource it can hold."""

    path: str
    provider: str
    head: NodeType
    workers: tuple[NodeType, ...]
    max_workers: int
    placeholders: tuple[str, ...] = field(default=())

    def max_resources(self) -> dict[str, float]:
        return max_resources(self.head, self.workers, self.max_workers)


def max_resources(head: NodeType, workers: tuple[NodeType, ...], max_workers: int) -> dict[str, float]:
    """The largest amount of each resource the autoscaler can bring up at once: the head plus, per resource, the
    richest worker types first until the global worker limit is reached."""
    keys = set(head.resources).union(*(w.resources for w in workers))
    total = {}
    for key in keys:
        amount, nodes_left = float(head.resources.get(key, 0)), max_workers
        for w in sorted(workers, key=lambda w: -w.resources.get(key, 0)):
            take = min(w.max_workers, nodes_left)
            amount += take * w.resources.get(key, 0)
            nodes_left -= take
        total[key] = amount
    return total


def load_cluster_config(path: str | Path) -> ClusterSpec:
    """Validate a cluster YAML as ``ray up`` would (schema + defaults) plus the project's checks."""
    import logging

    import jsonschema
    import ray
    import ray.autoscaler
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read cluster config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"cluster config {path} must hold a mapping")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    where = f"cluster config {path.name}"
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # prepare_config narrates its defaults
    try:
        jsonschema.validate(raw, schema)  # the user's file alone: a typo must not hide behind a default
        full = prepare_config(copy.deepcopy(raw))
        validate_config(full)
    except jsonschema.ValidationError as err:
        at = ".".join(str(p) for p in err.absolute_path) or "top level"
        raise ConfigError(f"{where}: {at}: {err.message}") from None
    except (AssertionError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}: {err or type(err).__name__}") from None
    return _project_checks(path, raw, where)


def _project_checks(path: Path, raw: dict, where: str) -> ClusterSpec:
    import ray

    types = raw.get("available_node_types")
    if not types:  # Ray would silently fall back to its CPU-only default node types
        raise ConfigError(f"{where}: available_node_types is missing; name the head and the GPU worker types")
    limit = raw.get("max_workers")
    if limit is None:
        raise ConfigError(f"{where}: max_workers (the cluster-wide worker limit) is missing")
    if raw.get("upscaling_speed", 1) <= 0:
        raise ConfigError(f"{where}: upscaling_speed must be > 0, or the cluster never grows")
    head_name = raw["head_node_type"]
    nodes = {}
    for name, spec in types.items():
        lo, hi = spec.get("min_workers", 0), spec.get("max_workers", limit)
        if name != head_name and (lo > hi or hi > limit):
            raise ConfigError(f"{where}: node type {name}: need min_workers {lo} <= max_workers {hi} <= "
                              f"the global max_workers {limit}")
        nodes[name] = NodeType(name, dict(spec["resources"]), lo, hi)
    head = nodes.pop(head_name)
    if head.resources.get("GPU"):
        raise ConfigError(f"{where}: the head {head_name} has GPUs; spd-tune keeps the head a CPU node "
                          "(it runs the drivers, MLflow and Optuna)")
    if not head.resources.get(DRIVER_RESOURCE):
        raise ConfigError(f"{where}: the head {head_name} must advertise a train_driver resource (one per "
                          "concurrent trial), or trial drivers may land on spot GPU workers")
    if not any(w.resources.get("GPU", 0) > 0 and w.max_workers > 0 for w in nodes.values()):
        raise ConfigError(f"{where}: no worker node type has GPUs (resources: {{GPU: n}}, max_workers > 0)")
    provider = raw["provider"]["type"]
    if provider == "gcp" and not raw["provider"].get("project_id"):
        raise ConfigError(f"{where}: provider.project_id is required on GCP")
    version = f"{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    docker = raw.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        image = docker.get(key)
        if image and image.startswith("rayproject/ray:") and not image.split(":", 1)[1].startswith(version):
            raise ConfigError(f"{where}: docker.{key} {image} does not match this machine's Ray and Python "
                              f"({version}); the launcher and the cluster must run the same versions")
    placeholders = tuple(sorted(set(PLACEHOLDER.findall(path.read_text()))))
    return ClusterSpec(str(path), provider, head, tuple(nodes.values()), limit, placeholders)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.cluster_config", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="cluster YAML files, e.g. cluster/gpu.yaml")
    p.add_argument("--strict", action="store_true", help="placeholders (YOUR-...) left in a file are errors")
    args = p.parse_args(argv)
    status = 0
    for path in args.configs:
        try:
            spec = load_cluster_config(path)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
            continue
        workers = ", ".join(f"{w.name}[{w.min_workers}..{w.max_workers}] {w.resources}" for w in spec.workers)
        most = {k: v for k, v in sorted(spec.max_resources().items())}
        print(f"ok {path}: {spec.provider}, head {spec.head.name} {spec.head.resources}; workers {workers}; "
              f"at most {spec.max_workers} workers, {most}")
        if spec.placeholders:
            print(f"  fill in before `ray up`: {', '.join(spec.placeholders)}")
            if args.strict:
                status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
