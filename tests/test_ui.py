import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_ui_serves_the_search_store_on_loopback_and_stops_cleanly(tmp_path):
    from mlflow.tracking import MlflowClient
    from ray_cluster import free_port

    search = tmp_path / "demo"
    search.mkdir()
    client = MlflowClient(f"sqlite:///{search / 'mlflow.db'}")
    experiment = client.create_experiment("demo", artifact_location=(search / "mlartifacts").as_uri())
    run = client.create_run(experiment, tags={"spd_tune.role": "search"})
    client.log_metric(run.info.run_id, "proxy_fd64", 2.5, step=1000)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "spd_tune.ui", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        start = time.time()
        while "MLflow UI" not in line and proc.poll() is None and time.time() - start < 60:
            line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                                    f"?experiment_name=demo", timeout=10) as response:
            assert b'"name": "demo"' in response.read().replace(b'":"', b'": "')
    finally:
        proc.send_signal(signal.SIGTERM)  # what a supervisor sends; Ctrl-C takes the same path
        proc.wait(timeout=30)
    time.sleep(1)
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert f"--port {port}" not in out  # no MLflow server left behind


def test_ui_names_a_missing_store(tmp_path, capsys):
    from spd_tune.ui import main

    assert main([str(tmp_path)]) == 2
    assert "no mlflow.db" in capsys.readouterr().err
