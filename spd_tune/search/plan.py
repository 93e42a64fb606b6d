"""What a search will use and where it writes, settled before Ray Tune is imported: the paths, how many trials
fit at once, whether there is a search to resume."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..cluster import Storage, check_fits, join_storage
from ..errors import ConfigError
from ..fsutil import atomic_path
from .space import Space

FINISHED_FILE = "search_finished.json"  # written last, with the champion's registration: the search is over


def tracking_uri_for(root: Path) -> str:
    """The default MLflow store: SQLite in the search's folder."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a search writes: everything under one folder unless moved by --storage-path / --optuna-storage."""

    root: Path  # on the driver's machine: the Optuna study, the default MLflow store, best/
    storage: Storage  # Tune and Train results and checkpoints (shared storage on a multi-node cluster)
    optuna_url: str
    tracking_uri: str

    @classmethod
    def of(cls, space: Space, storage_path: str | None, optuna_storage: str | None, tracking_uri: str | None,
           shared_storage: bool | None = None):
        root = Path(space.train.output) / space.train.name
        return cls(root=root, storage=Storage.resolve(storage_path, shared_storage, str(root / "ray")),
                   optuna_url=optuna_storage or f"sqlite:///{root / 'optuna.db'}",
                   tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri_for(root))

    def under_storage(self, *parts: str) -> str:
        """A path under the storage root, for local paths and bucket URIs alike."""
        return join_storage(self.storage.path, *parts)

    @property
    def experiment_dir(self) -> str:
        return self.under_storage("tune", self.root.name)


def concurrency(space: Space, driver: dict[str, float]) -> int:
    """Trials that fit at once on what the cluster (with its autoscaler) can hold: never more, or the rest would
    wait PENDING holding a driver each."""
    r = space.train.resources
    request = {**r.per_run(), **{k: v for k, v in driver.items() if k not in ("cpu", "memory")}}
    fit = check_fits(request, f"one trial ({r.workers} workers + its driver)",
                     "lower train.resources or use a larger cluster")
    wanted = space.search.max_concurrent
    if wanted is not None and wanted > fit:
        raise ConfigError(f"search.max_concurrent={wanted} trials do not fit: the cluster runs at most {fit} at once")
    return min(wanted or fit, space.search.trials)


def search_exists(layout: Layout) -> bool:
    """Tune's experiment state is there to resume (local or in a bucket)."""
    from ray import tune  # here, not at the top: --dry-run and bad input must not pay for importing Ray Tune

    if layout.storage.is_uri:
        return tune.Tuner.can_restore(layout.experiment_dir)
    return Path(layout.experiment_dir).exists() and tune.Tuner.can_restore(layout.experiment_dir)


def finished_search(layout: Layout) -> dict | None:
    """What a finished search recorded as its end (champion trial, registered model), or None."""
    path = layout.root / FINISHED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def mark_finished(layout: Layout, record: dict) -> None:
    with atomic_path(layout.root / FINISHED_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
