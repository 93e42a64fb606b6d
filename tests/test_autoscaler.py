"""Optional (marker ``autoscaler``): Ray's real autoscaler, with fake nodes of cluster/gpu.yaml's node types, runs
a search submitted with ``ray job submit`` . It proves that the search's requests (a driver on
``train_driver``, workers on an A10G node type) are what gpu.yaml's node types provide, and that the autoscaler
starts them on demand. CPU-only: the GPU worker type is asked for through its ``accelerator_type:A10G``
resource, since fake nodes have no CUDA devices.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from ray_cluster import TEST_ENV, _free_port_block, free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def fake_cluster_config(gcs_port: int) -> dict:
    """gpu.yaml's node types and resources on the fake provider; complete, since the monitor reads it raw."""
    raw = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    head = raw["available_node_types"][raw["head_node_type"]]
    workers = {name: {"min_workers": 0, "max_workers": min(spec["max_workers"], 2), "node_config": {},
                      "resources": dict(spec["resources"])}
               for name, spec in raw["available_node_types"].items() if name != raw["head_node_type"]}
    return {
        "cluster_name": "spd-tune-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "launch_multiple": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"}, "docker": {},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": 2, "train_driver": head["resources"][
            "train_driver"]}, "node_config": {}, "max_workers": 0}, **workers},
        "head_node_type": "ray.head.default", "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def test_the_fake_config_is_a_valid_cluster_config():
    from ray.autoscaler._private.util import validate_config

    validate_config(fake_cluster_config(6379))


def _processes_of(marker: str) -> set[int]:
    """PIDs whose command line names ``marker``, and all their descendants (workers rename themselves)."""
    parents, found = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline:
            found.add(int(entry.name))
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        grew = bool(children)
        found |= children
    return found


@pytest.fixture
def fake_autoscaling_cluster(private_caches):
    temp = tempfile.mkdtemp(prefix="as-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    config = Path(temp) / "fake.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(port)))
    env = {**os.environ, **TEST_ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_TMPDIR": temp, "TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    worker_base = _free_port_block(200)
    cmd = [RAY, "start", "--head", "--block", f"--autoscaling-config={config}", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 199}", "--num-cpus=2",
           "--num-gpus=0", '--resources={"train_driver": 8}', f"--temp-dir={temp}/ray", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = subprocess.run([RAY, "job", "list", "--address", f"http://127.0.0.1:{dashboard}"], env=env,
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
            assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            time.sleep(2)
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dashboard}", "temp": Path(temp), "gcs_port": port}
    finally:
        for pid in _processes_of(temp) | _processes_of(f"127.0.0.1:{port}"):  # ours only: never `ray stop`
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=60)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.autoscaler
@pytest.mark.timeout(600)
def test_a_job_submitted_search_scales_up_gpu_yamls_worker_type(fake_autoscaling_cluster, tmp_path):
    cluster = fake_autoscaling_cluster
    sets = ["train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.32", "train.eval.every_kimg=0.16",
            "train.eval.samples=16", "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4",
            "train.log_every_s=1000", "train.resources.custom={accelerator_type:A10G: 1}",
            "search.asha.grace_kimg=0.32", "search.asha.max_kimg=0.32", "search.final.top_k=0",
            "search.posthoc.enabled=false", "search.trials=2",
            f"train.data.cache_dir={tmp_path / 'cache'}"]
    entrypoint = [sys.executable, "-m", "spd_tune.search", "demo", "--address", "auto", "--output",
                  str(tmp_path / "out"), "--storage-path", str(tmp_path / "shared"), "--shared-storage"]
    for item in sets:
        entrypoint += ["--set", item]
    # no --working-dir: fake nodes share one runtime-env folder, and the project is installed
    # a launcher head has ~/ray_bootstrap_config.yaml; this head was started with --autoscaling-config instead
    env_vars = {k: os.environ[k] for k in ("SPD_TUNE_CACHE", "TORCH_HOME", "SPD_TUNE_DATA")}
    env_vars["SPD_TUNE_AUTOSCALER_CONFIG"] = str(cluster["temp"] / "fake.yaml")
    submit = [RAY, "job", "submit", "--address", cluster["dashboard"], "--runtime-env-json",
              json.dumps({"env_vars": env_vars}), "--", *entrypoint]
    done = subprocess.run(submit, env=cluster["env"], capture_output=True, text=True, timeout=300, check=False)
    (tmp_path / "job.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "succeeded" in done.stdout
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'out' / 'demo' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # the autoscaler brought up gpu.yaml's A10G worker type for the trials
    logs = "".join(p.read_text(errors="replace") for p in cluster["temp"].rglob("monitor*.log"))
    assert "worker.gpu.a10g" in logs
