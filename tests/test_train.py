"""The training loop in-process (LocalSession): loss, kimg accounting, exact resume, config handling."""

import json
import math

import matplotlib.image
import pytest
import torch

from spd_tune.checkpoint import load_checkpoint
from spd_tune.errors import ConfigError
from spd_tune.train.config import load_train_config
from spd_tune.train.loop import run_worker
from spd_tune.train.session import LocalSession

TINY = [
    "data.demo_count=256", "batch=16", "optim.lr=2e-3", "optim.warmup_kimg=0",
    "eval.samples=8", "eval.sampler_steps=4", "eval.ref_count=32", "eval.grid=4", "log_every_s=1000",
]


def tiny_config(tmp_path, *extra):
    return load_train_config("demo", [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *extra],
                             output=str(tmp_path / "runs"))


def test_loss_falls_and_reports_carry_the_metric(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.8", "eval.every_kimg=0.16")
    session = LocalSession(tmp_path / "run", quiet=True)
    run_worker(cfg, session)
    history = session.history
    assert [h["step"] for h in history] == [10, 20, 30, 40, 50]
    assert [h["kimg"] for h in history] == pytest.approx([0.16, 0.32, 0.48, 0.64, 0.8])
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(math.isfinite(h["proxy_fd64"]) and h["eval_samples"] == 8 for h in history)
    assert "fid" not in history[0]
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints][-1] == "step_000000050"
    grid = matplotlib.image.imread(checkpoints[-1] / "samples.png")
    assert grid.shape[1] >= 512 and grid.std() > 0  # 16 px samples upscaled (nearest) to a visible grid
    state = load_checkpoint(checkpoints[-1] / "checkpoint.pt")
    assert state.extra["step"] == 50 and state.extra["config"]["batch"] == 16 and state.ema is not None


def test_resume_continues_exactly(tmp_path):
    straight = LocalSession(tmp_path / "straight", quiet=True)
    run_worker(tiny_config(tmp_path, "total_kimg=0.32", "eval.every_kimg=0.16"), straight)
    resumed = LocalSession(tmp_path / "resumed", quiet=True)
    run_worker(tiny_config(tmp_path, "total_kimg=0.16", "eval.every_kimg=0.16"), resumed)
    run_worker(tiny_config(tmp_path, "total_kimg=0.32", "eval.every_kimg=0.16"), resumed)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_000000020" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_000000020" / "checkpoint.pt")
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
        assert torch.equal(a.ema[key], b.ema[key]), key
    assert [h["loss"] for h in straight.history][1] == resumed.history[-1]["loss"]


def test_accumulation_keeps_the_global_batch_and_kimg(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.16", "eval.every_kimg=0.16", "accumulation=2")
    assert cfg.per_worker_batch == 8
    session = LocalSession(tmp_path / "acc", quiet=True)
    run_worker(cfg, session)
    assert session.history[-1]["kimg"] == pytest.approx(0.16) and session.history[-1]["step"] == 10


def test_evaluation_points_include_rungs_and_the_end(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=1", "eval.every_kimg=0.4", "eval.at_kimg=[0.1, 0.25]")
    assert cfg.total_steps() == 63  # ceil(1000 / 16)
    assert cfg.evaluation_steps() == [7, 16, 25, 50, 63]


def test_config_errors_name_key_value_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optim.learning_rate'\]"):
        tiny_config(tmp_path, "optim.learning_rate=1e-3")
    with pytest.raises(ConfigError, match="optim.lr=-1.0"):
        tiny_config(tmp_path, "optim.lr=-1")
    with pytest.raises(ConfigError, match="batch=15 must be divisible by workers x accumulation = 2"):
        tiny_config(tmp_path, "batch=15", "resources.workers=2")
    with pytest.raises(ConfigError, match="steps=2"):
        tiny_config(tmp_path, "process.steps=2")
    with pytest.raises(ConfigError, match="model.preset"):
        tiny_config(tmp_path, "model.preset=huge")
    with pytest.raises(ConfigError, match="neither a config file nor a shipped search space"):
        load_train_config("no-such-space")
    with pytest.raises(ConfigError, match="must look like key=value"):
        tiny_config(tmp_path, "batch")


def test_paths_become_absolute_and_the_config_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("demo", ["data.cache_dir=rel/cache"], output="rel/runs")
    assert cfg.output == str(tmp_path / "rel" / "runs") and cfg.data.cache_dir == str(tmp_path / "rel" / "cache")
    from spd_tune.train.config import TrainConfig
    from spd_tune.typed import from_dict

    assert from_dict(TrainConfig, json.loads(cfg.to_json())) == cfg


def test_train_cli_dry_run_prints_config_and_plan(tmp_path, capsys):
    from spd_tune.train.__main__ import main

    assert main(["demo", "--dry-run", "--workers", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"workers": 2' in out and "(16 per worker x 2 workers x 1 accumulation)" in out
    assert not (tmp_path / "demo").exists()  # a dry run writes nothing
    assert main(["demo", "--set", "batch=33", "--workers", "2"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_resuming_a_finished_run_reports_its_final_metrics(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.16", "eval.every_kimg=0.16")
    session = LocalSession(tmp_path / "done", quiet=True)
    run_worker(cfg, session)
    again = LocalSession(tmp_path / "done", quiet=True)
    run_worker(cfg, again)
    assert len(again.history) == 1
    final = again.history[0]
    assert final["step"] == 10 and final["start_step"] == 10
    assert final["proxy_fd64"] == session.history[-1]["proxy_fd64"]


POWER = ["ema.kind=power", "ema.sigma_rels=[0.05, 0.10]", "ema.eval_sigma_rel=0.10"]


def test_power_ema_stores_snapshots_and_evaluates_the_named_profile(tmp_path):
    from spd_tune.core.ema import reconstruct
    from spd_tune.train.averaging import find_snapshots

    cfg = tiny_config(tmp_path, "total_kimg=0.48", "eval.every_kimg=0.32", "ema.snapshot_kimg=0.16",
                      "keep_checkpoints=1", *POWER)
    assert cfg.snapshot_steps() == [10, 20, 30]
    run_worker(cfg, LocalSession(tmp_path / "run", quiet=True))
    found = find_snapshots(tmp_path / "run" / "ema")
    assert [(s.step, s.sigma_rel) for s, _ in found] == [(st, sr) for st in (10, 20, 30) for sr in (0.05, 0.10)]
    snaps = {(s.step, s.sigma_rel): load_checkpoint(path) for s, path in found}  # weights-only format
    assert snaps[(30, 0.05)].extra["ema"] == {"kind": "power", "sigma_rel": 0.05}
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000030" / "checkpoint.pt")
    for key, value in final.ema.items():  # rungs and checkpoints hold the named profile
        assert torch.equal(value, snaps[(30, 0.10)].model[key]), key
    assert not torch.equal(snaps[(30, 0.05)].model["out.2.weight"], snaps[(30, 0.10)].model["out.2.weight"])
    # the post-hoc stage's raw material: any width rebuilt at the last snapshot, finite
    rebuilt = reconstruct([s for s, _ in found], [snaps[(s.step, s.sigma_rel)].model for s, _ in found], 30, 0.07)
    assert all(torch.isfinite(v).all() for v in rebuilt.values() if v.is_floating_point())


def test_power_ema_resumes_exactly(tmp_path):
    straight = LocalSession(tmp_path / "straight", quiet=True)
    run_worker(tiny_config(tmp_path, "total_kimg=0.32", "eval.every_kimg=0.16", *POWER), straight)
    resumed = LocalSession(tmp_path / "resumed", quiet=True)
    run_worker(tiny_config(tmp_path, "total_kimg=0.16", "eval.every_kimg=0.16", *POWER), resumed)
    run_worker(tiny_config(tmp_path, "total_kimg=0.32", "eval.every_kimg=0.16", *POWER), resumed)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_000000020" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_000000020" / "checkpoint.pt")
    for profile_a, profile_b in zip(a.extra["power_ema"]["averages"], b.extra["power_ema"]["averages"]):
        for key in profile_a:
            assert torch.equal(profile_a[key], profile_b[key]), key
    for key in a.ema:
        assert torch.equal(a.ema[key], b.ema[key]), key


@pytest.mark.parametrize("override, message", [
    ("ema.eval_sigma_rel=0.2", "must be one of ema.sigma_rels"),
    ("ema.sigma_rels=[0.5]", "ema.sigma_rels"),
    ("ema.snapshot_kimg=-1", "ema.snapshot_kimg"),
    ("ema.kind=boxcar", "ema.kind"),
])
def test_bad_power_ema_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, *POWER, override)
