"""Where Ray Tune and Ray Train write results and checkpoints, checked before anything starts.

On a cluster that spans nodes they must live where every node can write: a bucket URI or a shared file system
the user declares shared; a local path there would fail at a trial's first checkpoint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, first_line
from .capacity import spans_nodes

STORAGE_ENV = "SPD_TUNE_STORAGE"  # cluster/gpu.yaml sets it on the head: the one place storage is configured
SHARED_ENV = "SPD_TUNE_STORAGE_SHARED"


@dataclass(frozen=True)
class Storage:
    """Where Ray Tune and Ray Train write results and checkpoints."""

    path: str
    shared: bool = False  # a local path every node mounts at the same place (NFS, EFS, Filestore)

    @property
    def is_uri(self) -> bool:
        return "://" in self.path and not self.path.startswith("file://")

    @classmethod
    def resolve(cls, path: str | None, shared: bool | None, default: str) -> "Storage":
        """The flag, else SPD_TUNE_STORAGE / SPD_TUNE_STORAGE_SHARED, else ``default`` (local)."""
        path = path or os.environ.get(STORAGE_ENV) or default
        if shared is None:
            shared = os.environ.get(SHARED_ENV, "").lower() in ("1", "true", "yes")
        if "://" not in path:
            path = str(Path(path).expanduser().resolve())
        return cls(path, shared)


def join_storage(base: str, *parts: str) -> str:
    """A path under ``base``, for local paths and bucket URIs alike; a URI's query string (pyarrow's options, e.g.
    ``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``) stays at the end, where Ray and pyarrow read
    it."""
    path, query = (base.split("?", 1) + [""])[:2] if "://" in base else (base, "")
    joined = "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
    return f"{joined}?{query}" if query else joined


def check_local_dir(path: str | Path, what: str) -> None:
    """``path`` exists as a writable folder, or can be created: its nearest existing ancestor is one."""
    path = Path(path).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable ({probe} does not allow it)")


def check_storage_path(path: str) -> None:
    """A local folder we can write, or a bucket URI whose file system answers."""
    if "://" not in path or path.startswith("file://"):
        check_local_dir(path.removeprefix("file://"), "storage path")
        return
    import pyarrow.fs

    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        fs.get_file_info(inner)  # one metadata request: bad credentials or no route fail here, not at a checkpoint
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise ConfigError(f"storage {path} is not usable: {first_line(err)}") from None


def check_storage(storage: Storage) -> None:
    """A local storage path on a multi-node cluster fails only at a trial's first checkpoint: fail now."""
    if storage.is_uri or storage.shared or not spans_nodes():
        return
    raise ConfigError(
        f"storage {storage.path} is a local path, but this Ray cluster spans several nodes: give a bucket URI "
        f"(--storage-path s3://bucket/prefix or gs://...; or {STORAGE_ENV}), or, for a file system mounted at "
        f"the same path on every node (NFS, EFS), declare it with --shared-storage ({SHARED_ENV}=1)")


def remove_folder(path: str) -> bool:
    """Delete a folder under the storage (a local path or a bucket URI); False if it was not there."""
    if "://" not in path or path.startswith("file://"):
        local = Path(path.removeprefix("file://"))
        if not local.is_dir():
            return False
        shutil.rmtree(local)
        return True
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return False
    fs.delete_dir(inner)
    return True
