"""Post-hoc evaluations on a trained run's weights: any EMA width, any sampler, seeded and reproducible."""

import pytest
import torch

from spd_tune.core.samplers import SamplerConfig
from spd_tune.errors import CheckpointError
from spd_tune.posthoc import PosthocPoint, averaged_weights, evaluate_point
from spd_tune.train.config import load_train_config
from spd_tune.train.loop import run_worker
from spd_tune.train.session import LocalSession

TINY = ["data.demo_count=256", "batch=16", "optim.lr=2e-3", "optim.warmup_kimg=0", "eval.samples=8",
        "eval.sampler_steps=4", "eval.ref_count=32", "eval.grid=4", "log_every_s=1000", "total_kimg=0.32",
        "eval.every_kimg=0.16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny power-EMA run and one rate-EMA run, trained in-process."""
    tmp = tmp_path_factory.mktemp("posthoc")
    runs = {}
    for kind in ("power", "rate"):
        cfg = load_train_config("demo", [*TINY, f"data.cache_dir={tmp / 'cache'}", f"ema.kind={kind}"],
                                output=str(tmp / "runs"), name=kind)
        run_worker(cfg, LocalSession(tmp / kind, quiet=True))
        runs[kind] = (cfg, tmp / kind)
    return runs


def test_the_same_point_and_seeds_give_the_same_score(trained):
    cfg, run_dir = trained["power"]
    point = PosthocPoint(SamplerConfig("ddim", steps=3, eta=0.5), sigma_rel=0.07)
    a = evaluate_point(cfg, run_dir, point, samples=8, seed=5000)
    b = evaluate_point(cfg, run_dir, point, samples=8, seed=5000)
    assert a == b and a["nfe"] == 3 and a["samples"] == 8 and a["step"] == 20
    assert a["point"] == {"sigma_rel": 0.07, "sampler": "ddim", "steps": 3, "eta": 0.5}
    other = evaluate_point(cfg, run_dir, point, samples=8, seed=6000)
    assert other["score"] != a["score"]  # the seeds are the protocol's: other seeds, other samples


def test_a_width_rebuilt_from_snapshots_differs_from_the_stored_ones_and_matches_them_at_their_width(trained):
    _, run_dir = trained["power"]
    stored, step = averaged_weights(run_dir, 0.10)
    rebuilt, _ = averaged_weights(run_dir, 0.07)
    own, own_step = averaged_weights(run_dir, None)  # the checkpoint's evaluated profile (eval_sigma_rel 0.10)
    assert step == own_step == 20
    key = "out.2.weight"
    assert torch.allclose(stored[key], own[key], atol=1e-6)
    assert not torch.allclose(rebuilt[key], stored[key])


def test_a_rate_ema_run_has_no_width_to_rebuild(trained):
    cfg, run_dir = trained["rate"]
    with pytest.raises(CheckpointError, match="did not use ema.kind: power"):
        averaged_weights(run_dir, 0.07)
    result = evaluate_point(cfg, run_dir, PosthocPoint(SamplerConfig("ancestral", steps=2)), samples=8, seed=5000)
    assert result["nfe"] == 2 and result["point"]["sigma_rel"] is None
