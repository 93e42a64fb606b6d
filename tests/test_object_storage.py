"""A search whose Ray storage is an S3 bucket, served on loopback by moto's server, killed during its post-hoc stage
and continued with ``--resume auto``, as a RayJob's retry would: Tune's experiment state, the checkpoints and the
EMA snapshots go to the bucket and come back from it, and the post-hoc studies continue from their storage with
no evaluation repeated and no finalist skipped. The bucket is named by a URI whose query string carries pyarrow's
options (``endpoint_override``, ``scheme``): the form that survives Tune's restore (docs/cluster.md).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray_cluster import free_port
from study_db import count
from test_search_e2e import TINY, _kill_when, _posthoc_studies

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BUCKET = "spd-tune"
EVALUATIONS = 4


@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on 127.0.0.1 with one bucket (the credentials are moto's fakes, in tests/ray_cluster.py's
    TEST_ENV); its port and a client."""
    import boto3

    port = free_port()
    with open(tmp_path / "moto.log", "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                   str(port)], stdout=log, stderr=subprocess.STDOUT)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
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


def _told_posthoc_trials(db) -> int:
    return count(db, "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE study_name LIKE "
                      "'demo/posthoc/%' AND state IN ('COMPLETE', 'FAIL')")


def test_a_search_in_a_bucket_killed_during_posthoc_resumes_from_it(ray_cluster, s3, tmp_path):
    port, client = s3
    storage = f"s3://{BUCKET}/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    items = [*TINY[:-1], "search.trials=2", "search.asha.grace_kimg=0.64", f"search.posthoc.evaluations={EVALUATIONS}",
             "search.posthoc.batch=1", "search.posthoc.k_min=20", "search.posthoc.k_max=40",
             "search.posthoc.samples=48", "search.posthoc.seed=3000000", "search.final.seeds=1",
             f"train.data.cache_dir={tmp_path / 'cache'}"]
    args = [sys.executable, "-m", "spd_tune.search", "demo", "--output", str(tmp_path), "--storage-path", storage,
            "--resume", "auto", *[a for item in items for a in ("--set", item)]]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    root = tmp_path / "demo"
    _kill_when(args, env, tmp_path / "first.log", lambda: _told_posthoc_trials(root / "optuna.db") >= 1, 0.2)
    assert "--resume auto: no search yet; starting one" in (tmp_path / "first.log").read_text()
    told_before = _told_posthoc_trials(root / "optuna.db")
    assert 1 <= told_before < 2 * EVALUATIONS
    time.sleep(3)
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=420)
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"--resume auto: continuing the search under {root}" in resumed.stdout
    assert "registered as spd-tune-demo@champion" in resumed.stdout
    # the post-hoc studies continued from their storage
    studies = _posthoc_studies(root / "optuna.db")
    assert len(studies) == 2  # no finalist skipped
    for study in studies.values():
        states = [t.state for t in study.trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) == EVALUATIONS, states  # none repeated or lost
        assert optuna.trial.TrialState.RUNNING not in states
    client_ml = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for run in client_ml.search_runs([client_ml.get_experiment_by_name("demo").experiment_id]):
        if run.data.tags.get("spd_tune.trial_id") in studies:
            steps = [m.step for m in client_ml.get_metric_history(run.info.run_id, "posthoc_proxy_fd64")]
            assert sorted(steps) == list(range(EVALUATIONS)), steps  # each evaluation logged once
    # what lives in the bucket: what a retry's new cluster reads
    keys = _keys(client)
    assert any(k.startswith("runs/tune/demo/experiment_state") for k in keys)
    runs = {k.split("/")[1] for k in keys if k.startswith("runs/train-")}
    assert len(runs) == 2 and all(any(f"runs/{r}/checkpoint_" in k for k in keys) for r in runs)
    assert any("/ema/" in k for k in keys)  # the finalists' EMA snapshots, which the post-hoc stage read back
    info = json.loads((root / "best" / "champion.json").read_text())
    assert {"ema", "sampling"} <= set(info) and (root / "best" / "model.pt").is_file()
    assert info["checkpoint"].startswith(f"{BUCKET}/runs/train-")  # scored and copied from the bucket
