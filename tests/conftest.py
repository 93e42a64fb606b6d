import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_cluster import TEST_ENV  # noqa: E402

# Before anything imports ray: some of these are read once, at import (e.g. loopback-only node addresses).
os.environ.update(TEST_ENV)


@pytest.fixture(autouse=True, scope="session")
def private_caches(tmp_path_factory):
    """Nothing a test does may touch the user's real caches (torch hub, FID statistics, data sets)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("caches")
    for var, sub in (("TORCH_HOME", "torch"), ("SPD_TUNE_CACHE", "spd_tune"), ("SPD_TUNE_DATA", "data")):
        mp.setenv(var, str(root / sub))
    mp.delenv("SPD_TUNE_FID_WEIGHTS", raising=False)
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def ray_cluster(private_caches):
    """One private Ray cluster for all Ray tests of the session (see tests/ray_cluster.py)."""
    from ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(num_cpus=2).start()
    yield cluster
    cluster.stop()
