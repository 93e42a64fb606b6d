"""FID pipeline, offline: staged random weights through the real constructor, closed forms, streaming stats."""

import math
import time
import warnings

import numpy as np
import pytest
import torch

from spd_tune.data import to_uint8
from spd_tune.fid import (
    FID_WEIGHTS_FILE,
    FeatureSpec,
    InceptionFeatures,
    RunningStats,
    WeightsError,
    frechet_distance,
    merge_all,
    random_inception_state_dict,
    reference_stats,
    resolve_fid_weights,
    score,
    stats_key,
)
from spd_tune.fid.weights import sha256_of


def score_samples(samples, features, ref) -> float:
    """Samples (uint8 NHWC, or float NCHW in [-1, 1]) against reference statistics, as the evaluator scores them:
    floats are quantised as the reference images are, and a non-finite sample scores inf at once."""
    if not (isinstance(samples, np.ndarray) and samples.dtype == np.uint8):
        samples = torch.as_tensor(samples)
        if not bool(torch.isfinite(samples).all()):
            return math.inf
        samples = to_uint8(samples)
    return score(features.stats(samples), ref)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private TORCH_HOME (never the user's cache) and no way to download anything."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("SPD_TUNE_FID_WEIGHTS", raising=False)
    attempts = []

    def no_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home, attempts


@pytest.fixture
def staged_weights(torch_home):
    home, attempts = torch_home
    path = home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(random_inception_state_dict(seed=1), path)
    return path, sha256_of(path)[:8], attempts


def test_real_constructor_loads_staged_weights_without_downloading(staged_weights):
    path, prefix, attempts = staged_weights
    features = InceptionFeatures(FeatureSpec(dims=2048), sha256_prefix=prefix)  # test-only hash override
    assert features.resolved.path == path.resolve() and features.resolved.source == "the torch hub cache"
    assert attempts == []
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    feats = features(images)
    assert feats.shape == (4, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert feats.std(axis=0).max() > 1e-3  # kaiming init: features do not vanish
    # staged random weights never produce a score called FID
    assert features.metric_name == "proxy_fd2048" and not features.resolved.is_fid


def test_staged_weights_without_the_override_fail_the_hash_check(staged_weights):
    with pytest.raises(WeightsError, match="expected the prefix 6726825d"):
        InceptionFeatures(FeatureSpec(dims=64))


def test_empty_cache_fails_with_a_clear_error(torch_home):
    _, attempts = torch_home
    with pytest.raises(WeightsError, match=f"could not download.*{FID_WEIGHTS_FILE}.*--fid-weights"):
        resolve_fid_weights()
    assert len(attempts) == 1
    assert not any(torch_home[0].rglob("*.partial"))  # nothing half-written is left behind
    with pytest.raises(WeightsError, match="downloading is off"):
        resolve_fid_weights(download=False)


def test_explicit_path_and_environment_come_first(staged_weights, tmp_path, monkeypatch):
    path, prefix, _ = staged_weights
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(path.read_bytes())
    assert resolve_fid_weights(explicit, sha256_prefix=prefix).source == "--fid-weights"
    monkeypatch.setenv("SPD_TUNE_FID_WEIGHTS", str(explicit))
    assert resolve_fid_weights(sha256_prefix=prefix).source == "SPD_TUNE_FID_WEIGHTS"
    with pytest.raises(WeightsError, match="not found at"):
        resolve_fid_weights(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="not the pytorch-fid Inception weights or it is corrupted"):
        resolve_fid_weights(corrupt)


# --- Fréchet distance ------------------------------------------------------------------------------

def _random_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_closed_forms(d):
    rng = np.random.default_rng(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # commuting, non-diagonal
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), 4 * np.eye(d)) == pytest.approx(d, rel=1e-12)
    c = rng.normal(size=d)
    s = _random_spd(d, rng)
    assert frechet_distance(mu1, s, mu1 + c, s) == pytest.approx(c @ c, rel=1e-8, abs=1e-9)
    assert abs(frechet_distance(mu1, s, mu1, s)) < 1e-9 * np.trace(s)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_pytorch_fid_on_general_covariances(d):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(100 + d)
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_spd(d, rng), _random_spd(d, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=) deprecation
        reference = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_non_finite_input_is_inf_immediately():
    d = 256
    s = np.eye(d)
    bad = s.copy()
    bad[3, 4] = np.nan
    start = time.perf_counter()
    assert frechet_distance(np.zeros(d), bad, np.zeros(d), s) == math.inf
    assert frechet_distance(np.full(d, np.inf), s, np.zeros(d), s) == math.inf
    assert time.perf_counter() - start < 1.0


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- streaming statistics -------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_merged_streaming_stats_equal_one_shot_numpy(offset):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 24)) + offset
    cuts = np.sort(rng.choice(np.arange(1, 3000), size=25, replace=False))
    parts = [RunningStats(24).update(chunk) for chunk in np.split(x, cuts)]
    parts.append(RunningStats(24))  # an empty worker share is fine
    parts.append(RunningStats(24).update(x[:0]))
    order = rng.permutation(len(parts))
    merged = merge_all([parts[i] for i in order])
    assert merged.n == 3000
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    cov = np.cov(x, rowvar=False)
    assert np.abs(merged.covariance - cov).max() / np.abs(cov).max() < 1e-10
    restored = RunningStats.from_state(merged.state())
    np.testing.assert_array_equal(restored.covariance, merged.covariance)


def test_stats_need_two_samples_and_matching_dims():
    with pytest.raises(ValueError, match="at least 2"):
        RunningStats(3).update(np.zeros((1, 3))).covariance
    with pytest.raises(ValueError, match="merge"):
        RunningStats(3).merge(RunningStats(4))
    assert score(RunningStats(3).update(np.zeros((1, 3))), RunningStats(3).update(np.eye(3))) == math.inf


# --- features, folders, scoring and the reference cache ---------------------------------------------

@pytest.fixture(scope="module")
def proxy64():
    return InceptionFeatures(FeatureSpec(dims=64, weights="random"), batch_size=7)


def test_proxy_features_need_no_file_and_are_honestly_named(proxy64, monkeypatch):
    assert proxy64.metric_name == "proxy_fd64" and proxy64.resolved is None
    assert proxy64.weights_id == "random-kaiming-seed0"


def test_folder_path_equals_the_in_memory_path(proxy64, tmp_path):
    from PIL import Image
    from pytorch_fid.fid_score import get_activations

    images = np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(files[-1])
    ours = proxy64(images)
    theirs = get_activations([str(f) for f in files], proxy64.net, batch_size=4, dims=64, device="cpu",
                             num_workers=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(proxy64(images[:5]), ours[:5], atol=1e-5)  # batch size does not matter


def test_scores_order_sensibly_and_nan_samples_are_inf(proxy64):
    from spd_tune.data.dead_leaves import dead_leaves

    ref = proxy64.stats(dead_leaves(64, 32, seed=1))
    similar = score_samples(dead_leaves(64, 32, seed=2), proxy64, ref)
    noise = score_samples(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), proxy64, ref)
    assert 0 < similar < noise
    floats = torch.rand(4, 3, 32, 32) * 2 - 1
    floats[2, 1, 5, 5] = float("nan")
    start = time.perf_counter()
    assert score_samples(floats, proxy64, ref) == math.inf
    assert time.perf_counter() - start < 0.5


def test_reference_statistics_are_cached_by_content(proxy64, tmp_path, monkeypatch):
    images = np.random.default_rng(5).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    first, path = reference_stats(images, proxy64, tmp_path)
    assert path.is_file() and path.name.startswith("fid_stats_") and not list(tmp_path.glob("*.tmp"))
    with np.load(path) as f:
        assert f["mu"].shape == (64,) and f["sigma"].shape == (64, 64) and int(f["n"]) == 12

    def must_not_recompute(*args, **kwargs):
        raise AssertionError("statistics were recomputed")

    monkeypatch.setattr(proxy64, "stats", must_not_recompute)
    again, same_path = reference_stats(images, proxy64, tmp_path)
    assert same_path == path and np.array_equal(again.covariance, first.covariance)
    changed = images.copy()
    changed[7, 3, 3, 1] ^= 1
    assert stats_key(changed, proxy64) != stats_key(images, proxy64)  # one pixel gives a new key
    assert stats_key(images[:11], proxy64) != stats_key(images, proxy64)


def test_fid_cli_ref_and_score_offline(tmp_path, capsys):
    from spd_tune.fid.__main__ import main

    common = ["--proxy", "--dims", "64", "--n", "32", "--image-size", "16", "--cache-dir", str(tmp_path)]
    assert main(["ref", "demo", *common]) == 0
    assert "proxy_fd64 reference statistics of 32 demo images" in capsys.readouterr().out
    from spd_tune.data.dead_leaves import dead_leaves

    np.savez(tmp_path / "s.npz", images=dead_leaves(16, 16, seed=9))
    assert main(["score", str(tmp_path / "s.npz"), "--ref", "demo", *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("proxy_fd64 = ") and "16 samples vs 32 demo images" in out and "fid =" not in out


def test_fid_cli_errors_are_one_line(tmp_path, capsys, torch_home):
    from spd_tune.fid.__main__ import main

    assert main(["ref", "cifar10", "--data-dir", str(tmp_path / "none"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert main(["score", str(tmp_path / "missing.npz"), "--ref", "demo", "--proxy"]) == 2
    assert "samples file not found" in capsys.readouterr().err
