"""Hardening: the bad-input table, injected faults, security properties, and docs/reliability.md kept in step
with all of them."""

import ast
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from bad_input import CASES, RAY_CASES, run_case

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"

# Every fault injected anywhere in the suite: the table in docs/reliability.md lists exactly these ids.
FAULTS = {
    "search driver killed, then --resume": "tests/test_interrupt.py::test_tune_optuna_and_mlflow_agree_on_every_trial",
    "Ctrl-C: SIGINT to the search's process group while trials train, then --resume":
        "tests/test_interrupt.py::test_sigint_to_the_group_stops_at_once_and_registers_nothing",
    "SIGTERM (a scheduler's notice) while trials train, then --resume":
        "tests/test_interrupt.py::test_sigterm_stops_with_143_and_a_double_sigint_at_once",
    "a second Ctrl-C": "tests/test_interrupt.py::test_sigterm_stops_with_143_and_a_double_sigint_at_once",
    "SIGINT during the post-hoc stage, then --resume":
        "tests/test_interrupt.py::test_sigint_during_the_posthoc_stage_keeps_its_evaluations",
    "--resume on a finished search": "tests/test_interrupt.py::test_resume_on_a_finished_search_has_nothing_to_do",
    "Train worker process killed": "tests/test_train_ray.py::test_killed_worker_resumes_from_the_last_checkpoint",
    "GPU worker node lost": "tests/test_cluster.py::test_search_runs_trials_on_several_nodes_and_survives_losing_one",
    "trial-driver node lost": "tests/test_cluster.py::test_losing_the_trial_driver_node_resumes_the_trial",
    "loss turns NaN": "tests/test_reliability.py::test_a_diverging_trial_fails_and_the_search_goes_on",
    "checkpoint folder full or read-only (in-process)":
        "tests/test_reliability.py::test_a_full_disk_fails_the_run_and_keeps_the_last_good_checkpoint",
    "disk full while writing a checkpoint (Ray Train)":
        "tests/test_reliability.py::test_a_full_disk_fails_a_ray_train_run_clearly",
    "MLflow server killed mid-search": "tests/test_reliability.py::test_the_search_outlives_its_mlflow_server",
}


# --- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, private_caches):
    """The whole table, run in one fresh process in which Ray has never started."""
    out = tmp_path_factory.mktemp("bad-input") / "results.json"
    subprocess.run([sys.executable, str(ROOT / "tests" / "bad_input.py"), str(out)], check=True, timeout=600,
                   cwd=ROOT)
    return json.loads(out.read_text())


def _assert_clean_refusal(result, case):
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert result["code"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert case.expect in lines[0], lines[0]
    assert result["changed"] == [], f"files were written or changed: {result['changed']}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_before_anything_starts(bad_input_results, case):
    result = bad_input_results[case.id]
    _assert_clean_refusal(result, case)
    assert not result["ray_started"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", RAY_CASES, ids=[c.id for c in RAY_CASES])
def test_requests_the_cluster_can_never_satisfy_are_refused(ray_cluster, tmp_path, case):
    _assert_clean_refusal(run_case(case, tmp_path), case)


def test_the_table_has_at_least_25_cases():
    assert len(CASES) + len(RAY_CASES) >= 25
    assert len({c.id for c in [*CASES, *RAY_CASES]}) == len(CASES) + len(RAY_CASES)


# --- docs/reliability.md ---------------------------------------------------------------------------------------

def _table_ids(heading: str) -> list[str]:
    """First-column entries of the markdown table under ``## heading``."""
    section = DOC.read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [row.split("|")[1].strip() for row in rows]


def test_the_reliability_doc_lists_exactly_the_bad_input_cases():
    assert _table_ids("Bad input") == [c.id for c in [*CASES, *RAY_CASES]]


def test_the_reliability_doc_lists_exactly_the_injected_faults():
    assert _table_ids("Faults") == list(FAULTS)
    for test in FAULTS.values():
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), test


# --- faults --------------------------------------------------------------------------------------------------

TINY_TRAIN = ["data.demo_count=256", "batch=16", "optim.lr=2e-3", "optim.warmup_kimg=0", "eval.samples=8",
              "eval.sampler_steps=4", "eval.ref_count=32", "eval.grid=4", "log_every_s=1000"]


@pytest.mark.parametrize("error, message", [("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")])
def test_a_full_disk_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, error, message):
    from spd_tune.checkpoint import load_checkpoint
    from spd_tune.train.config import load_train_config
    from spd_tune.train.loop import run_worker
    from spd_tune.train.session import LocalSession

    def config(*extra):
        return load_train_config("demo", [*TINY_TRAIN, f"data.cache_dir={tmp_path / 'cache'}", "total_kimg=0.48",
                                          "eval.every_kimg=0.16", *extra], output=str(tmp_path / "runs"))

    session = LocalSession(tmp_path / "run", quiet=True)
    with pytest.raises(OSError, match=rf"cannot write the checkpoint of step 20 \({message}"):
        run_worker(config("faults.checkpoint_write_error_at_kimg=0.32", f"faults.checkpoint_write_error={error}"),
                   session)
    folder = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(folder / "step_000000010" / "checkpoint.pt").extra["step"] == 10  # untouched
    assert not (folder / "step_000000020" / "checkpoint.pt").exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]  # the partial file was removed
    # once there is room again, the run resumes from the last good checkpoint and finishes
    resumed = LocalSession(tmp_path / "run", quiet=True)
    run_worker(config(), resumed)
    assert [h["step"] for h in resumed.history] == [20, 30] and resumed.history[-1]["start_step"] == 10


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_full_disk_fails_a_ray_train_run_clearly(ray_cluster, tmp_path):
    import ray.train

    from spd_tune.checkpoint import load_checkpoint
    from spd_tune.train.config import load_train_config
    from spd_tune.train.driver import build_trainer

    cfg = load_train_config("demo", [*TINY_TRAIN, f"data.cache_dir={tmp_path / 'cache'}", "total_kimg=0.48",
                                     "eval.every_kimg=0.16", "faults.checkpoint_write_error_at_kimg=0.32",
                                     "max_failures=0"], output=str(tmp_path / "runs"), name="full")
    out = {}

    def fit():
        try:
            build_trainer(cfg, "proxy_fd64").fit()
        except ray.train.TrainingFailedError as err:
            out["message"] = str(err)

    # not in the main thread, where Train would install a SIGINT handler holding the run's controller (and
    # its resources) for the rest of the session; only the error's text is kept, for the same reason
    thread = threading.Thread(target=fit)
    thread.start()
    thread.join(timeout=300)
    gc.collect()
    message = out.get("message")
    assert message is not None and "No space left on device" in message
    assert "cannot write the checkpoint of step 20" in message
    from multinode import wait_for
    from ray.util.state import list_actors

    wait_for(lambda: not list_actors(filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]), 60,
             "the failed run's controller to exit")
    run = ray.train.Result.from_path(str(tmp_path / "runs" / "full"))
    latest = run.checkpoint
    assert latest is not None and latest.path.rstrip("/").endswith("step_000000010")
    with latest.as_directory() as directory:
        assert load_checkpoint(Path(directory) / "checkpoint.pt").extra["step"] == 10


SEARCH = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.64", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.16", "search.asha.max_kimg=0.64", "search.final.top_k=0", "search.gate.enabled=false",
    "search.posthoc.enabled=false",
]


def _search_args(tmp_path, *items):
    items = [*SEARCH, f"train.data.cache_dir={tmp_path / 'cache'}", *items]
    return ["demo", "--output", str(tmp_path)] + [arg for item in items for arg in ("--set", item)]


SECRET = "spd-tune-test-secret-7f3a"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_diverging_trial_fails_and_the_search_goes_on(ray_cluster, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from spd_tune.search.__main__ import main

    # secrets in the driver's environment must reach no MLflow param, tag or artifact
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    args = _search_args(tmp_path, "search.trials=3", "search.seed=3", "train.faults.nan_loss_at_kimg=0.16",
                        "search.params.nan_at={path: faults.nan_loss_at_kimg, type: categorical, "
                        "choices: [0.16, 1000.0]}")
    assert main(args) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == 3
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    healthy = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert study.trials[0] in failed and all(t.user_attrs.get("spd_tune.diverged") for t in failed)
    assert all(t.params["nan_at"] == 0.16 for t in failed) and all(t.params["nan_at"] == 1000.0 for t in healthy)
    assert healthy, "pick another search.seed: every trial diverged"
    assert "diverged" in out
    champion = json.loads((root / "best" / "champion.json").read_text())
    assert champion["params"]["nan_at"] == 1000.0  # a diverged trial is never the champion
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    trials = [r for r in runs if r.data.tags.get("spd_tune.role") == "trial"]
    diverged = [r for r in trials if r.data.tags.get("spd_tune.diverged") == "true"]
    assert len(diverged) == len(failed) and all(r.info.status == "FAILED" for r in diverged)
    assert all(r.info.status != "RUNNING" for r in runs)
    for run in runs:  # no secret in params, tags or any artifact
        assert SECRET not in json.dumps([run.data.params, run.data.tags])
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id))
        for path in Path(local).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def _serve_mlflow(tmp_path):
    from ray_cluster import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        stdout=open(tmp_path / "mlflow-server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    import urllib.request

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the MLflow server did not start: " + (tmp_path / "mlflow-server.log").read_text()[-2000:])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_search_outlives_its_mlflow_server(private_ray_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    server, uri = _serve_mlflow(tmp_path)
    # the search as users run it, in its own process: if it ever hung, it is stopped by PID, not left behind
    # (every trial runs to the end here: the subject is MLflow, not ASHA)
    args = [sys.executable, "-m", "spd_tune.search", *_search_args(tmp_path, "search.trials=3",
            "search.asha.grace_kimg=0.64"), "--tracking-uri", uri]
    env = {**os.environ, "RAY_ADDRESS": private_ray_cluster.address}
    log = open(tmp_path / "search.log", "w")
    search = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = MlflowClient(uri)

        def logged_a_metric():
            try:
                experiment = client.get_experiment_by_name("demo")
                runs = client.search_runs([experiment.experiment_id]) if experiment else []
                return any(r.data.metrics for r in runs)
            except Exception:  # noqa: BLE001 - the server is still starting up its store
                return False

        deadline = time.time() + 300
        while time.time() < deadline and not logged_a_metric() and search.poll() is None:
            time.sleep(1)
        assert logged_a_metric(), "no metric reached MLflow"
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-search
        server.wait(timeout=30)
        try:
            code = search.wait(timeout=360)
        except subprocess.TimeoutExpired:
            raise AssertionError("the search stalled after MLflow went away") from None
        assert code == 0, (tmp_path / "search.log").read_text()[-3000:]
    finally:
        for proc in (server, search):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()
    assert "MLflow paused" in (tmp_path / "search.log").read_text()  # it noticed, said so, and went on
    root = tmp_path / "demo"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(math.isfinite(t.value) for t in study.trials)
    assert (root / "best" / "model.pt").is_file()  # the champion is kept even though it could not be registered


# --- security ------------------------------------------------------------------------------------------------

def _package_calls():
    for path in sorted((ROOT / "spd_tune").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(ROOT), node


def _name(func) -> str:
    return ast.unparse(func)


def test_every_torch_load_is_weights_only():
    loads = [(path, node) for path, node in _package_calls() if _name(node.func) == "torch.load"]
    assert loads
    for path, node in loads:
        flags = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in flags and ast.literal_eval(flags["weights_only"]) is True, path


def test_no_shell_strings_are_built():
    for path, node in _package_calls():
        name = _name(node.func)
        assert name not in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"), path
        if name.startswith("subprocess."):
            flags = {k.arg: k.value for k in node.keywords}
            assert "shell" not in flags or ast.literal_eval(flags["shell"]) is False, path
            assert node.args and not isinstance(node.args[0], (ast.Constant, ast.JoinedStr)), path  # argv lists


def test_servers_bind_loopback_in_the_cluster_configs():
    for path in (ROOT / "cluster").glob("*.yaml"):
        text = path.read_text()
        assert "--dashboard-host=127.0.0.1" in text and "--host 127.0.0.1" in text, path
        assert "0.0.0.0" not in text, path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_ray_serves_its_dashboard_on_loopback_only(tmp_path):
    script = (
        "import os, socket\n"
        "from spd_tune.cluster import ensure_ray\n"
        "ensure_ray()\n"
        "import ray\n"
        "port = int(os.environ['RAY_API_SERVER_ADDRESS'].rsplit(':', 1)[1])\n"
        "found = set()\n"
        "for table in ('/proc/net/tcp', '/proc/net/tcp6'):\n"
        "    for row in open(table).read().splitlines()[1:]:\n"
        "        local, state = row.split()[1], row.split()[3]\n"
        "        host, hex_port = local.split(':')\n"
        "        if state == '0A' and int(hex_port, 16) == port:  # LISTEN\n"
        "            raw = bytes.fromhex(host)\n"
        "            family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6\n"
        "            words = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))\n"
        "            found.add(socket.inet_ntop(family, words))\n"
        "print(sorted(found))\n"
        "ray.shutdown()\n")
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # AF_UNIX socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_TMPDIR=temp, TMPDIR=temp)
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240,
                              check=False)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\['127\.0\.0\.1'\]\s*$", done.stdout), done.stdout[-500:]
