"""A search whose Ray storage is an S3 bucket, served on loopback by moto's server: checkpoints, Tune's experiment
state, the EMA snapshots and the champion's checkpoint go to the bucket and come back from it, and ``--resume
auto`` continues a killed search from the bucket, as a RayJob's retry would. The bucket is named by a URI whose
query string carries pyarrow's options (``endpoint_override``, ``scheme``): the form that survives Tune's restore.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from ray_cluster import LocalRayCluster, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BUCKET = "spd-tune"
TINY = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.64", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.32", "search.asha.max_kimg=0.64", "search.gate.enabled=false", "search.trials=2",
    "search.max_concurrent=1", "search.final.top_k=1", "search.final.samples=16", "search.final.sampler_steps=4",
    "search.final.seeds=1", "search.posthoc.evaluations=2", "search.posthoc.k_min=2", "search.posthoc.k_max=6",
    "search.posthoc.samples=16",
]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on 127.0.0.1 with one bucket; its endpoint. The credentials are moto's fakes."""
    import boto3

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    with open(tmp_path / "moto.log", "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield port, client
    finally:
        server.terminate()
        server.wait(timeout=30)


def _keys(client) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_search_in_a_bucket_is_killed_and_resumed_from_it(ray_cluster, s3, tmp_path):
    import ray

    port, client = s3
    storage = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    ray.shutdown()  # a cluster of our own, whose processes inherit the bucket's credentials
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    cluster = LocalRayCluster(num_cpus=2).start()
    try:
        args = [sys.executable, "-m", "spd_tune.search", "demo", "--output", str(tmp_path), "--storage-path", storage,
                "--resume", "auto", *[a for item in TINY for a in ("--set", item)],
                "--set", f"train.data.cache_dir={tmp_path / 'cache'}"]
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        with open(tmp_path / "first.log", "w") as log:  # killed once its first checkpoint is in the bucket
            first = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + 300
            while time.time() < deadline and first.poll() is None and not any(
                    "/checkpoint_" in k and k.startswith("runs/train-") for k in _keys(client)):
                time.sleep(1)
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=420)
        (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        cluster.stop()
        if saved is not None:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved
        ray.init(address=ray_cluster.address)
    assert f"--resume auto: continuing the search under {tmp_path / 'demo'}" in resumed.stdout
    assert "registered as spd-tune-demo@champion" in resumed.stdout
    keys = _keys(client)
    assert any(k.startswith("runs/tune/demo/experiment_state") for k in keys)  # Tune's state: what a retry reads
    runs = {k.split("/")[1] for k in keys if k.startswith("runs/train-")}
    assert len(runs) == 2 and all(any(f"runs/{r}/checkpoint_" in k for k in keys) for r in runs)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'demo' / 'optuna.db'}")
    assert len(study.trials) == 2  # the killed search's trials were continued, not started again
    root = tmp_path / "demo"
    assert (root / "best" / "model.pt").is_file() and (root / "report.html").is_file()
    import json

    info = json.loads((root / "best" / "champion.json").read_text())
    assert info["checkpoint"].startswith(f"{BUCKET}/runs/train-")  # scored and copied from the bucket
