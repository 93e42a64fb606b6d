"""A private single-node Ray cluster for tests: loopback only, explicit ports, its own temp dir, stopped by PID.

``ray start --head --block`` runs as our child; SIGTERM to it stops every process it started, so nothing
else on the machine is touched (no ``ray stop``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Set before the head starts, so the raylet and every worker inherit them (Ray reads some of them once, at start-up).
TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # bind 127.0.0.1 only
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "OMP_NUM_THREADS": "1",
    # moto's fake credentials, so that every Ray process can reach the loopback S3 server of
    # tests/test_object_storage.py (its endpoint is in the bucket URI); nothing else reads them
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_block(size: int) -> int:
    """A block of ports below the kernel's ephemeral range, where free_port() never lands, all bindable now."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) if Path(
        "/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    for _ in range(50):
        base = random.randrange(10000, low - size, size)
        try:
            for port in range(base, base + size, 17):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of worker ports")


STOP_GRACE_S = 5


class LocalRayCluster:
    def __init__(self, num_cpus: int = 2, resources: str | None = None):
        self.num_cpus, self.resources = num_cpus, resources
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # AF_UNIX paths live here: keep it short
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "LocalRayCluster":
        os.environ.update(TEST_ENV)
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{self.dashboard_port}"
        worker_base = _free_port_block(200)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--min-worker-port={worker_base}",
               f"--max-worker-port={worker_base + 199}", f"--temp-dir={self.temp_dir}",
               "--object-store-memory=200000000", "--disable-usage-stats"]
        if self.resources:
            cmd.append(f"--resources={self.resources}")
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        import ray

        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(self.temp_dir) / 'ray-start.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        ray.init(address=self.address, log_to_driver=True)
        return self

    def stop(self) -> None:
        import ray

        ray.shutdown()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the process group we started, nothing else
            try:
                # most of the group is gone within a second or two; Ray's GCS then waits out a 30 s grace period
                # that a test cluster, whose folder is deleted next, does not need
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# --- leaving the cluster as it was found -------------------------------------------------------------------

HELD_PG_STATES = ("CREATED", "PENDING", "RESCHEDULING")


def leftovers() -> list[str]:
    """What the connected cluster still holds for finished work: CPUs not free, live placement groups."""
    import ray

    found = []
    total, free = ray.cluster_resources().get("CPU", 0.0), ray.available_resources().get("CPU", 0.0)
    if free + 1e-6 < total:
        found.append(f"{total - free:g} of {total:g} CPUs held")
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg["state"] in HELD_PG_STATES:
            found.append(f"placement group {pg_id} ({pg['state']}, {pg['bundles']})")
    return found


# Ray's own detached helpers, one per cluster or ending by themselves; anything else alive after a search is a leak
RAY_HELPERS = (
    "PlacementGroupCleaner",  # Train's: exits once its controller has ended
    "_AutoscalingCoordinatorActor",  # Ray Data's cluster-wide singleton, started by Train's dataset set-up
)


def live_actors() -> list[str]:
    """Live actors other than Ray's own helpers (State API, served by the dashboard)."""
    from ray.util.state import list_actors

    return [f"{a.class_name} (pid {a.pid})" for a in list_actors(filters=[("state", "=", "ALIVE")])
            if a.ray_namespace != "_ray_internal" and not a.class_name.startswith(RAY_HELPERS)]


def wait_until_clean(timeout: float = 30.0, poll: float = 0.5) -> list[str]:
    """Give Ray's own clean-up (Train's placement-group cleaner, worker exit) a bounded time; what is left."""
    deadline = time.time() + timeout
    while True:
        found = leftovers()
        if not found or time.time() > deadline:
            return found
        time.sleep(poll)


def remove_placement_groups() -> None:
    """Free what a failed check found, so one leak does not fail every later test too."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    for pg_id, pg in ray.util.placement_group_table().items():
        if pg["state"] in HELD_PG_STATES:
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
