import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_cluster import TEST_ENV  # noqa: E402

# Run only when asked for by name (pytest -m soak, pytest -m known_answer): too long for the default suite.
# Deselected here rather than with addopts -m, which a user's own -m (e.g. "not slow") would replace.
OPT_IN_MARKERS = ("soak", "known_answer")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("-m") or ""
    keep, drop = [], []
    for item in items:
        opt_in = [m for m in OPT_IN_MARKERS if item.get_closest_marker(m)]
        (drop if any(m not in wanted for m in opt_in) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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


RAY_FIXTURES = {"ray_cluster", "private_ray_cluster"}


@pytest.fixture(autouse=True)
def leaves_the_ray_cluster_as_found(request):
    """After a test that used the session's cluster: every CPU free again and no placement group held, within
    a bounded wait for Ray's own clean-up; otherwise the test fails, by name, and the leftovers are removed."""
    yield
    if not RAY_FIXTURES & set(request.fixturenames):
        return
    import ray
    from ray_cluster import remove_placement_groups, wait_until_clean

    if not ray.is_initialized():
        pytest.fail(f"{request.node.nodeid} left the session's Ray cluster disconnected")
    found = wait_until_clean()
    if found:
        remove_placement_groups()
        pytest.fail(f"{request.node.nodeid} left the Ray cluster holding: {'; '.join(found)}")


@pytest.fixture(scope="session")
def ray_cluster(private_caches):
    """One private Ray cluster for all Ray tests of the session (see tests/ray_cluster.py)."""
    from ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(num_cpus=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def private_ray_cluster(ray_cluster):
    """A fresh single-node cluster for one test, free of what earlier tests left in the session's cluster
    (e.g. a run's controller kept alive by a test's own references); the session's cluster is reconnected after."""
    import ray
    from ray_cluster import LocalRayCluster

    ray.shutdown()
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    cluster = LocalRayCluster(num_cpus=2).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is not None:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved
        ray.init(address=ray_cluster.address)
