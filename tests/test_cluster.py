"""The cluster path: the launcher configs in cluster/, resource checks against the autoscaler's limits, storage
rules, and searches on a simulated multi-node cluster that lose a worker node or the trial-driver node."""

import threading
from pathlib import Path

import optuna
import pytest
import yaml

from spd_tune.cluster import Storage
from spd_tune.cluster.launcher import PLACEHOLDER, load_cluster_config
from spd_tune.cluster.launcher import main as check_main
from spd_tune.errors import ConfigError

CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))


def test_the_shipped_cluster_configs_exist():
    assert {p.name for p in CONFIGS} >= {"gpu.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_cluster_config_passes_rays_schema_and_the_project_checks(path):
    spec = load_cluster_config(path)
    assert spec.head.resources.get("train_driver", 0) >= 1 and not spec.head.resources.get("GPU")
    assert any(w.resources.get("GPU") for w in spec.workers)
    most = spec.max_resources()
    # the default trial (search_spaces/cifar10.yaml: 1 worker x 1 GPU) fits, many of them at once
    assert most["GPU"] >= 8 and most["train_driver"] >= 8
    # what the user must fill in is named, and nothing else is a placeholder
    assert set(spec.placeholders) == set(PLACEHOLDER.findall(path.read_text())) and spec.placeholders


def test_gpu_yaml_limits_are_the_autoscalers():
    spec = load_cluster_config(CLUSTER_DIR / "gpu.yaml")
    most = spec.max_resources()
    # 8 worker nodes at most: the 8-GPU node plus 7 single-GPU nodes
    assert most["GPU"] == 15 and most["accelerator_type:A10G"] == 8 and most["accelerator_type:A100"] == 8
    assert most["CPU"] == 8 + 96 + 7 * 4


def _mutated(tmp_path, mutate, base="gpu.yaml"):
    raw = yaml.safe_load((CLUSTER_DIR / base).read_text())
    mutate(raw)
    path = tmp_path / base
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(path, value):
    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


_DELETE = object()
A10G = ("available_node_types", "worker.gpu.a10g")
HEAD = ("available_node_types", "head.cpu")

# (what is wrong, mutation, words the one-line error must contain); the first six Ray catches, the rest are ours
CLUSTER_MISTAKES = [
    ("fractional GPU", _set((*A10G, "resources", "GPU"), 0.5), "resources"),
    ("typo in a top-level key", _set(("idle_timeout_minute",), 5), "idle_timeout_minute"),
    ("head type not defined", _set(("head_node_type",), "head.gpu"), "head_node_type"),
    ("setup_commands as a string", _set(("setup_commands",), "pip install -e ."), "setup_commands"),
    ("docker shm_size key", _set(("docker", "shm_size"), "16g"), "shm_size"),
    ("missing node_config", _set((*A10G, "node_config"), _DELETE), "node_config"),
    ("no node types (Ray falls back to CPU-only defaults)",
     lambda raw: [raw.pop("available_node_types"), raw.pop("head_node_type")], "available_node_types is missing"),
    ("type max above global max", _set((*A10G, "max_workers"), 20), "<= the global max_workers"),
    ("type min above its max", lambda raw: raw["available_node_types"]["worker.gpu.a10g"].update(
        min_workers=5, max_workers=3), "min_workers 5 <= max_workers 3"),
    ("upscaling_speed 0", _set(("upscaling_speed",), 0), "upscaling_speed"),
    ("head without train_driver", _set((*HEAD, "resources"), {"CPU": 8}), "train_driver"),
    ("GPU head", _set((*HEAD, "resources"), {"CPU": 8, "GPU": 1, "train_driver": 8}), "has GPUs"),
    ("no GPU worker type", lambda raw: [w["resources"].pop("GPU") for name, w in
                                        raw["available_node_types"].items() if name != "head.cpu"], "no worker node type"),
    ("image of another Ray", _set(("docker", "image"), "rayproject/ray:2.59.0-py311-gpu"), "does not match"),
]


@pytest.mark.parametrize("what, mutate, expected", CLUSTER_MISTAKES, ids=[c[0] for c in CLUSTER_MISTAKES])
def test_cluster_config_mistakes_get_a_one_line_error(tmp_path, what, mutate, expected):
    with pytest.raises(ConfigError) as err:
        load_cluster_config(_mutated(tmp_path, mutate))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_gcp_without_a_project_id_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="project_id"):
        load_cluster_config(_mutated(tmp_path, _set(("provider", "project_id"), None), base="gcp.yaml"))


def test_cluster_config_cli_lists_placeholders_and_is_strict_on_request(capsys):
    assert check_main([str(CLUSTER_DIR / "gpu.yaml")]) == 0
    assert "YOUR-BUCKET" in capsys.readouterr().out
    assert check_main([str(CLUSTER_DIR / "gpu.yaml"), "--strict"]) == 2


def test_storage_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("SPD_TUNE_STORAGE", raising=False)
    monkeypatch.delenv("SPD_TUNE_STORAGE_SHARED", raising=False)
    assert Storage.resolve(None, None, str(tmp_path)) == Storage(str(tmp_path), False)
    monkeypatch.setenv("SPD_TUNE_STORAGE", "s3://bucket/spd")
    monkeypatch.setenv("SPD_TUNE_STORAGE_SHARED", "1")
    found = Storage.resolve(None, None, str(tmp_path))
    assert found.path == "s3://bucket/spd" and found.is_uri and found.shared
    assert Storage.resolve(str(tmp_path / "nfs"), False, "x") == Storage(str(tmp_path / "nfs"), False)


# --- on a running Ray: the autoscaler's limits ---------------------------------------------------------------

def _space(tmp_path, *sets):
    from spd_tune.search.space import load_space

    return load_space("demo", [f"train.data.cache_dir={tmp_path / 'cache'}", *sets], output=str(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resource_checks_use_the_autoscalers_limits(ray_cluster, tmp_path, monkeypatch):
    from spd_tune.cluster import capacity, check_storage, driver_resources
    from spd_tune.search.plan import concurrency

    monkeypatch.setenv("SPD_TUNE_AUTOSCALER_CONFIG", str(tmp_path / "absent.yaml"))
    gpu_trial = _space(tmp_path, "train.resources.gpus_per_worker=1")
    with pytest.raises(ConfigError, match=r"GPU 1 \(cluster at most 0\)"):  # a laptop has no GPU
        concurrency(gpu_trial, driver_resources())
    assert "train_driver" not in driver_resources()  # not advertised here: not requested
    check_storage(Storage(str(tmp_path), False))  # one node: a local path is fine

    monkeypatch.setenv("SPD_TUNE_AUTOSCALER_CONFIG", str(CLUSTER_DIR / "gpu.yaml"))  # as `ray up` puts it on the head
    assert capacity()["GPU"] == 15
    driver = driver_resources()
    assert driver["train_driver"] == 1
    assert concurrency(gpu_trial, driver) == 6  # every trial fits at once: GPUs would allow 15, the head 8 drivers
    assert concurrency(_space(tmp_path, "train.resources.gpus_per_worker=1", "search.trials=20"), driver) == 8
    ddp8 = _space(tmp_path, "train.resources.gpus_per_worker=1", "train.resources.workers=8", "train.batch=64")
    assert concurrency(ddp8, driver) == 1
    too_big = _space(tmp_path, "train.resources.gpus_per_worker=1", "train.resources.workers=16", "train.batch=64")
    with pytest.raises(ConfigError, match=r"GPU 16 \(cluster at most 15\)"):
        concurrency(too_big, driver)
    a100 = _space(tmp_path, "train.resources.gpus_per_worker=1", "train.resources.custom={accelerator_type:H100: 1}")
    with pytest.raises(ConfigError, match="accelerator_type:H100"):
        concurrency(a100, driver)
    with pytest.raises(ConfigError, match="local path, but this Ray cluster spans several nodes"):
        check_storage(Storage(str(tmp_path), False))
    check_storage(Storage(str(tmp_path), True))
    check_storage(Storage("s3://bucket/spd-tune", False))


# --- a simulated multi-node cluster --------------------------------------------------------------------------

MULTINODE = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=1.28", "train.eval.every_kimg=0.16",
    "train.eval.samples=16", "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4",
    "train.log_every_s=1000", "train.resources.custom={trainer_slot: 1}", "search.asha.grace_kimg=1.28",
    "search.asha.max_kimg=1.28", "search.final.top_k=0", "search.posthoc.enabled=false",
]


def _search_args(tmp_path, trials, address, *extra):
    items = [*MULTINODE, f"search.trials={trials}", f"train.data.cache_dir={tmp_path / 'cache'}"]
    return ["demo", "--output", str(tmp_path / "out"), "--storage-path", str(tmp_path / "shared"),
            "--address", address, *extra] + [arg for item in items for arg in ("--set", item)]


def _run_in_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn(*args)), daemon=True)
    thread.start()
    return thread, out


def _train_runs(tmp_path):
    import ray.train

    return {d.name: ray.train.Result.from_path(str(d)) for d in sorted((tmp_path / "shared").glob("train-*"))}


def _assert_every_trial_accounted_for(tmp_path, trials):
    root = tmp_path / "out" / "demo"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * trials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                              filter_string="tags.`spd_tune.role` = 'trial'")
    assert len(runs) == trials and all(r.info.status == "FINISHED" for r in runs)
    results = _train_runs(tmp_path)
    assert len(results) == trials
    assert all(r.metrics["kimg"] == pytest.approx(1.28) for r in results.values())
    assert (root / "best" / "model.pt").is_file()
    return results


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_runs_trials_on_several_nodes_and_survives_losing_one(tmp_path, monkeypatch, capsys):
    from multinode import (
        add_trainer_node,
        registered_checkpoints,
        simulated_cluster,
        train_worker_nodes,
        trial_driver_nodes,
        wait_for,
    )

    from spd_tune.search.__main__ import main

    with simulated_cluster(monkeypatch, head_resources={"train_driver": 2}) as cluster:
        workers = [add_trainer_node(cluster) for _ in range(2)]
        cluster.wait_for_nodes()
        # a local path on several nodes is refused before anything starts, unless declared shared
        assert main(_search_args(tmp_path, 2, cluster.address)) == 2
        assert "spans several nodes" in capsys.readouterr().err
        assert not (tmp_path / "shared").exists() and not (tmp_path / "out" / "demo").exists()

        thread, out = _run_in_thread(main, _search_args(tmp_path, 2, cluster.address, "--shared-storage"))
        # both trials train at once, each on its own worker node; their drivers stay on the head
        placed = wait_for(lambda: (lambda n: n if len(set(n.values())) == 2 else None)(train_worker_nodes()),
                          240, "two trials training on two nodes")
        assert set(placed.values()) == {w.node_id for w in workers}
        assert trial_driver_nodes() == {cluster.head_node.node_id}
        wait_for(lambda: [d for d in (tmp_path / "shared").glob("train-*") if registered_checkpoints(d)]
                 and len([d for d in (tmp_path / "shared").glob("train-*") if registered_checkpoints(d)]) == 2,
                 240, "a registered checkpoint in both trials")
        victim_id = next(iter(train_worker_nodes().values()))
        victim = next(w for w in workers if w.node_id == victim_id)
        cluster.remove_node(victim)  # a spot node is reclaimed mid-trial ...
        add_trainer_node(cluster)  # ... and the autoscaler brings up a replacement
        thread.join(timeout=420)
        assert not thread.is_alive(), "the search did not finish"
        assert out["value"] == 0
    results = _assert_every_trial_accounted_for(tmp_path, 2)
    resumed = [r for r in results.values() if r.metrics["start_step"] > 0]
    assert len(resumed) == 1  # the trial on the lost node went on from its last registered checkpoint


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_losing_the_trial_driver_node_resumes_the_trial(tmp_path, monkeypatch):
    from multinode import add_trainer_node, registered_checkpoints, simulated_cluster, trial_driver_nodes, wait_for

    from spd_tune.search.__main__ import main

    def add_driver_node():
        return cluster.add_node(num_cpus=0, resources={"train_driver": 1}, node_ip_address="127.0.0.1",
                                object_store_memory=80 * 1024**2)

    with simulated_cluster(monkeypatch, head_resources={}) as cluster:
        driver_node = add_driver_node()
        add_trainer_node(cluster)
        cluster.wait_for_nodes()
        # the way a job on a launcher cluster joins it: --address auto (the cluster's address file)
        thread, out = _run_in_thread(main, _search_args(tmp_path, 1, "auto", "--shared-storage"))
        wait_for(lambda: trial_driver_nodes() == {driver_node.node_id}, 240, "the trial driver on its node")
        wait_for(lambda: any(registered_checkpoints(d) for d in (tmp_path / "shared").glob("train-*")), 240,
                 "a registered checkpoint")
        cluster.remove_node(driver_node)  # the trial's driver and Train controller die with it
        add_driver_node()
        thread.join(timeout=420)
        assert not thread.is_alive(), "the search did not finish"
        assert out["value"] == 0
    results = _assert_every_trial_accounted_for(tmp_path, 1)
    assert next(iter(results.values())).metrics["start_step"] > 0
