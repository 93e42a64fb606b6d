"""Open a search's MLflow store in the MLflow UI, and with ``--optuna`` its Optuna study in optuna-dashboard,
on 127.0.0.1.

    python -m spd_tune.ui spd_runs/demo             # MLflow: the search's runs page is printed
    python -m spd_tune.ui spd_runs/demo --optuna    # and optuna-dashboard (pip install -e '.[dashboard]')

Ready within seconds, and nothing is left running after Ctrl-C: each UI runs in its own process group, which is
stopped as a whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .cli import Parser


def find_store(folder: Path) -> Path:
    """The search folder's mlflow.db, or the single search under an --output folder."""
    if (folder / "mlflow.db").is_file():
        return folder / "mlflow.db"
    found = sorted(folder.glob("*/mlflow.db"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no mlflow.db in {folder} or its sub-folders: pass a search folder "
                                f"(e.g. spd_runs/demo)")
    raise FileNotFoundError(f"several searches under {folder}: pass one of {[str(p.parent) for p in found]}")


def runs_page(url: str, store: Path) -> str:
    """The MLflow UI's page of the search's runs (its experiment), or the UI's root if there is none yet."""
    import sqlite3

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as con:
        found = con.execute("SELECT experiment_id FROM experiments WHERE name != 'Default' AND lifecycle_stage = "
                            "'active' ORDER BY experiment_id LIMIT 1").fetchone()
    return f"{url}/#/experiments/{found[0]}/runs" if found else url


def start_dashboard(study_db: Path, host: str, port: int) -> subprocess.Popen:
    """optuna-dashboard on the search's study database (the optional extra ``dashboard``)."""
    executable = Path(sys.executable).parent / "optuna-dashboard"
    if not executable.is_file():
        raise FileNotFoundError("optuna-dashboard is not installed: pip install -e '.[dashboard]' (or "
                                "pip install optuna-dashboard)")
    cmd = [str(executable), f"sqlite:///{study_db.resolve()}", "--host", host, "--port", str(port), "--quiet"]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start(store: Path, host: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store.resolve()}",
           "--host", host, "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60, path: str = "/health") -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.ui", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a search folder (OUTPUT/<space>) or an --output folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; reach it by SSH forwarding)")
    p.add_argument("--port", type=int, default=5000, help="the MLflow UI's port (default: 5000)")
    p.add_argument("--optuna", action="store_true", help="also serve the search's Optuna study (and its post-hoc "
                   "studies) in optuna-dashboard")
    p.add_argument("--optuna-port", type=int, default=8080, help="optuna-dashboard's port (default: 8080)")
    args = p.parse_args(argv)
    try:
        store = find_store(args.folder)
        if args.optuna and not (store.parent / "optuna.db").is_file():
            raise FileNotFoundError(f"no optuna.db beside {store}")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return serve(args, store)


def serve(args, store: Path) -> int:
    url = f"http://{args.host}:{args.port}"

    def interrupt(signum, frame):  # Ctrl-C and SIGTERM, even where a shell started us with SIGINT ignored
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    procs = []
    try:
        if args.optuna:
            try:
                procs.append(start_dashboard(store.parent / "optuna.db", args.host, args.optuna_port))
            except FileNotFoundError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        procs.append(start(store, args.host, args.port))
        if not wait_ready(url, procs[-1]):
            print(f"error: the MLflow UI did not come up on {url}", file=sys.stderr)
            return 1
        print(f"MLflow UI for {store}: {runs_page(url, store)}  (Ctrl-C stops it)", flush=True)
        if args.optuna:
            dashboard = f"http://{args.host}:{args.optuna_port}"
            if not wait_ready(dashboard, procs[0], path="/api/studies"):
                print(f"error: optuna-dashboard did not come up on {dashboard}", file=sys.stderr)
                return 1
            print(f"optuna-dashboard for {store.parent / 'optuna.db'}: {dashboard}/dashboard  (Ctrl-C stops it)",
                  flush=True)
        procs[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
