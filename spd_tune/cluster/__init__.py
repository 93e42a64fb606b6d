"""The cluster a run lands on: capacity (what it can ever hold), storage rules, launcher-config checks. No torch."""

from .capacity import (
                       DRIVER_RESOURCE,
                       capacity,
                       check_fits,
                       check_resource_names,
                       driver_resources,
                       spans_nodes,
                       worker_resources,
)
from .connect import ensure_ray
from .storage import SHARED_ENV, STORAGE_ENV, Storage, check_storage, check_storage_path, join_storage, remove_folder

__all__ = ["DRIVER_RESOURCE", "SHARED_ENV", "STORAGE_ENV", "Storage", "capacity", "check_fits",
           "check_resource_names", "check_storage", "check_storage_path", "join_storage", "driver_resources", "ensure_ray",
           "remove_folder", "spans_nodes", "worker_resources"]
