"""A simulated multi-node Ray cluster on one machine (ray.cluster_utils.Cluster), for cluster tests.

Every node binds 127.0.0.1, the head runs the dashboard (Train's placement-group cleanup after a lost driver
needs it) on an explicit port, and all nodes share one file system, which stands in for NFS. ``trainer_slot``
stands in for a GPU: CPU-only machines cannot fake CUDA devices (Ray detects GPUs through the driver, which a CPU machine has not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ray_cluster import TEST_ENV, free_port

SLOT = "trainer_slot"
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@contextlib.contextmanager
def simulated_cluster(monkeypatch, head_resources: dict, head_cpus: int = 1):
    """A head node plus whatever the test adds; the pytest process is not connected (the search connects)."""
    import ray
    from ray.cluster_utils import Cluster

    previous = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    ray.shutdown()  # the session's single-node cluster keeps running; we reconnect to it afterwards
    temp = tempfile.mkdtemp(prefix="mn-", dir="/tmp")  # AF_UNIX socket paths: keep them short
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    dashboard = free_port()
    ray_dir = os.path.join(temp, "ray")
    os.makedirs(ray_dir)
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=head_cpus, resources=head_resources, node_ip_address="127.0.0.1", include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard, dashboard_agent_listen_port=free_port(),
        object_store_memory=80 * 1024**2, temp_dir=ray_dir, _system_config=FAST_FAILURE_DETECTION))
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if previous:
            ray.init(address=previous)


def add_trainer_node(cluster, **resources):
    return cluster.add_node(num_cpus=1, resources={SLOT: 1, **resources}, node_ip_address="127.0.0.1",
                            object_store_memory=80 * 1024**2)


def registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints the Train controller has registered (only those are restored after a failure)."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
    except (OSError, ValueError):
        return 0


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_worker_nodes() -> dict[str, str]:
    """pid -> node id of every live Ray Train worker (State API, served by the head's dashboard)."""
    from ray.util.state import list_actors

    actors = list_actors(address=os.environ["RAY_API_SERVER_ADDRESS"],
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return {a.pid: a.node_id for a in actors}


def trial_driver_nodes() -> set[str]:
    """Node ids of the live Tune trial actors (each holds a trial's driver and its Train controller)."""
    from ray.util.state import list_actors

    actors = list_actors(address=os.environ["RAY_API_SERVER_ADDRESS"], filters=[("state", "=", "ALIVE")])
    return {a.node_id for a in actors if a.class_name.startswith("ImplicitFunc")}
