"""Ray Train end to end: DDP on 2 workers, worker-count invariance, a killed worker resumes."""

import math
import os
import signal
import threading
import time

import pytest

from spd_tune.train.config import load_train_config
from spd_tune.train.driver import build_trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TINY = [
    "data.demo_count=256", "batch=16", "optim.lr=2e-3", "optim.warmup_kimg=0", "eval.samples=10",
    "eval.sampler_steps=4", "eval.ref_count=32", "eval.grid=4", "log_every_s=1000", "max_failures=2",
]


def config(tmp_path, name, *extra):
    return load_train_config("demo", [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *extra],
                             output=str(tmp_path / "runs"), name=name)


def history(result):
    return result.metrics_dataframe.sort_values("step")


@pytest.fixture(scope="module")
def one_and_two_workers(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    results = {}
    for workers in (1, 2):
        cfg = config(tmp, f"w{workers}", "total_kimg=0.48", "eval.every_kimg=0.16", f"resources.workers={workers}")
        results[workers] = (cfg, _fit_in_a_thread(build_trainer(cfg, "proxy_fd64")))
    return results


def _fit_in_a_thread(trainer, timeout: float = 360):
    """fit() off the main thread: there Train would install a SIGINT handler that keeps a failed run's
    controller (and its workers' CPUs) alive for the rest of the session."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", trainer.fit()), daemon=True)
    thread.start()
    thread.join(timeout=timeout)
    assert "result" in out, "the run did not finish"
    return out["result"]


def test_ddp_run_learns_and_reports_an_exact_sample_count(one_and_two_workers):
    cfg, result = one_and_two_workers[2]
    assert result.error is None
    df = history(result)
    assert list(df["step"]) == cfg.evaluation_steps()
    assert df["loss"].iloc[-1] < df["loss"].iloc[0]
    assert all(math.isfinite(v) for v in df["proxy_fd64"]) and set(df["eval_samples"]) == {10}
    assert result.checkpoint is not None and (result.checkpoint.path.rstrip("/").endswith("step_000000030"))
    assert len(result.best_checkpoints) <= cfg.keep_checkpoints + 1


def test_same_global_batch_and_kimg_on_one_and_two_workers(one_and_two_workers):
    (cfg1, r1), (cfg2, r2) = one_and_two_workers[1], one_and_two_workers[2]
    assert cfg1.per_worker_batch == 16 and cfg2.per_worker_batch == 8
    k1, k2 = list(history(r1)["kimg"]), list(history(r2)["kimg"])
    assert k1 == k2 == [cfg1.kimg_at(s) for s in cfg1.evaluation_steps()] == pytest.approx([0.16, 0.32, 0.48])


def _train_workers():
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def test_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    # with power-EMA profiles and one checkpoint kept: the profiles resume too, and their snapshots sit in the run
    # folder outside Ray's checkpoint retention
    cfg = config(tmp_path, "killed", "total_kimg=0.96", "eval.every_kimg=0.16", "resources.workers=2",
                 "ema.kind=power", "keep_checkpoints=1")
    trainer = build_trainer(cfg, "proxy_fd64")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", trainer.fit()))
    thread.start()
    run_dir = tmp_path / "runs" / "killed"
    deadline = time.time() + 300
    while time.time() < deadline and not list(run_dir.glob("step_000000020")):
        time.sleep(0.2)
    assert list(run_dir.glob("step_000000020")), "no checkpoint appeared"
    pids = _train_workers()
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)
    thread.join(timeout=360)
    result = out["result"]
    assert result.error is None
    final = result.metrics
    assert final["kimg"] == pytest.approx(0.96) and final["step"] == 60
    # the restarted workers began from a registered checkpoint (the one in flight at the kill may be lost)
    assert final["start_step"] in (10, 20)
    assert result.checkpoint.path.rstrip("/").endswith("step_000000060")
    assert math.isfinite(final["proxy_fd64"]) and final["eval_samples"] == 10
    from spd_tune.checkpoint import load_checkpoint
    from spd_tune.train.averaging import find_snapshots

    found = find_snapshots(run_dir / "ema")
    assert [(s.step, s.sigma_rel) for s, _ in found] == [(st, sr) for st in range(10, 61, 10) for sr in (0.05, 0.10)]
    assert len(list(run_dir.glob("step_*"))) <= 2  # Ray pruned its checkpoints, not the snapshots
    last = load_checkpoint(found[-1][1])
    assert last.extra["step"] == 60 and last.extra["ema"] == {"kind": "power", "sigma_rel": 0.10}


def test_a_train_run_whose_trial_has_gone_reserves_no_workers(ray_cluster, tmp_path):
    """A trial's controller outlives its trial for a moment; it must not reserve a worker group in it (nothing
    would ever release that reservation: see train.driver.EndsWithItsTrial)."""
    import ray
    from ray.util.state import get_actor

    from spd_tune.train.driver import EndsWithItsTrial

    @ray.remote(num_cpus=0)
    class Trial:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    trial = Trial.remote()
    trial_id = ray.get(trial.actor_id.remote())
    ray.kill(trial)
    deadline = time.time() + 30
    while (get_actor(trial_id) is None or get_actor(trial_id).state != "DEAD") and time.time() < deadline:
        time.sleep(0.2)
    before = set(ray.util.placement_group_table())
    cfg = config(tmp_path, "orphan", "total_kimg=0.16", "eval.every_kimg=0.16")
    out = {}

    def fit():
        try:
            out["result"] = build_trainer(cfg, "proxy_fd64", callbacks=[EndsWithItsTrial(trial_id)]).fit()
        except Exception as err:  # noqa: BLE001 - inspected below
            out["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert "error" in out, f"the run went on without its trial: {out}"
    assert isinstance(out["error"], ray.exceptions.RayActorError), repr(out["error"])
    reserved = [pg_id for pg_id, pg in ray.util.placement_group_table().items()
                if pg_id not in before and any("CPU" in bundle for bundle in pg["bundles"].values())]
    assert reserved == []
