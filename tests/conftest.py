import pytest


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
