"""The Ray cluster a run lands on: what it can ever hold and where trial drivers go.

On a launcher cluster (``ray up cluster/gpu.yaml``) GPU workers exist only once the autoscaler starts them,
so resource checks compare against the autoscaler's limits (max workers x node resources), not only against
the nodes that are up now.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from .launcher import DRIVER_RESOURCE, NodeType, max_resources

AUTOSCALER_CONFIG_ENV = "SPD_TUNE_AUTOSCALER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written by `ray up` on the head
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _bootstrap_max_resources() -> tuple[dict[str, float], int] | None:
    """The autoscaler's limits from the launcher's config on the head, if this is a launcher cluster."""
    import yaml

    path = Path(os.environ.get(AUTOSCALER_CONFIG_ENV, BOOTSTRAP_CONFIG)).expanduser()
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
        types = raw["available_node_types"]
        head_name, limit = raw["head_node_type"], int(raw["max_workers"])
        nodes = {name: NodeType(name, dict(spec.get("resources", {})), int(spec.get("min_workers", 0)),
                                int(spec.get("max_workers", limit))) for name, spec in types.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"cannot read the autoscaler config {path}: {err}") from None
    head = nodes.pop(head_name)
    return max_resources(head, tuple(nodes.values()), limit), limit


def autoscaler_limits() -> tuple[dict[str, float], int] | None:
    """(most of each resource, most worker nodes) the autoscaler can provide; None without an autoscaler."""
    found = _bootstrap_max_resources()
    if found is not None:
        return found
    try:  # Ray's own record, where its autoscaler reports one to the GCS
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an internal API: its absence only means "no autoscaler known"
        most = None
    return (dict(most), 1 << 30) if most else None


def capacity() -> dict[str, float]:
    """The most of each resource the cluster can ever hold: what is up now or what the autoscaler may add."""
    import ray

    now = ray.cluster_resources()
    limits = autoscaler_limits()
    most = limits[0] if limits else {}
    return {key: max(float(now.get(key, 0)), float(most.get(key, 0))) for key in set(now) | set(most)}


def spans_nodes() -> bool:
    """True when work may run on more than one machine: several nodes up, or an autoscaler that adds some."""
    import ray

    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    limits = autoscaler_limits()
    return alive > 1 or (limits is not None and limits[1] > 0)


def driver_resources() -> dict[str, float]:
    """What a trial driver (Tune function + Train controller) holds: no CPU, and one ``train_driver`` where the
    cluster advertises it, which keeps drivers on the head and off spot GPU workers."""
    resources = {"cpu": 0, "memory": 1}
    if capacity().get(DRIVER_RESOURCE, 0) >= 1:
        resources[DRIVER_RESOURCE] = 1
    return resources


def worker_resources(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    """One Ray Train worker's resource request."""
    request = {"CPU": cpus, **custom}
    if gpus:
        request["GPU"] = gpus
    return request


def check_fits(request: dict[str, float], what: str, hint: str) -> int:
    """How many copies of ``request`` the cluster can ever hold at once; an error if not even one."""
    have = capacity()
    check_resource_names(request, have)
    fits = copies_that_fit(request, have)
    if fits < 1:
        short = ", ".join(f"{key} {need:g} (cluster at most {have.get(key, 0):g})" for key, need in request.items()
                          if need > have.get(key, 0) + 1e-9)
        raise ConfigError(f"{what} needs {short}; {hint}")
    return fits


def check_resource_names(request: dict[str, float], have: dict[str, float]) -> None:
    """A custom resource the cluster never advertises is most often a typo: name the close ones."""
    import difflib

    for key in request:
        if key in have or key in BUILTIN_RESOURCES:
            continue
        custom = sorted(k for k in have if k not in BUILTIN_RESOURCES and not k.startswith("node:"))
        close = difflib.get_close_matches(key, custom, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"resources.custom names {key!r}, which this cluster does not have (nor its autoscaler); "
                          f"{hint}its custom resources: {custom or 'none'}")


def copies_that_fit(request: dict[str, float], have: dict[str, float]) -> int:
    fits = [int(have.get(key, 0) / need + 1e-9) for key, need in request.items() if need > 0]
    return min(fits) if fits else 1 << 30
