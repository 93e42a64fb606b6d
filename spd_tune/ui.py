"""Open a search's MLflow store in the MLflow UI, on 127.0.0.1.

    python -m spd_tune.ui spd_runs/demo            # then browse http://127.0.0.1:5000

At most two processes (MLflow's job runner is switched off), ready within seconds, and nothing is left
running after Ctrl-C: the UI runs in its own process group, which is stopped as a whole.
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


def start(store: Path, host: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store.resolve()}",
           "--host", host, "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
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
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    try:
        store = find_store(args.folder)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = f"http://{args.host}:{args.port}"

    def interrupt(signum, frame):  # Ctrl-C and SIGTERM, even where a shell started us with SIGINT ignored
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    proc = start(store, args.host, args.port)
    try:
        if not wait_ready(url, proc):
            print(f"error: the MLflow UI did not come up on {url}", file=sys.stderr)
            return 1
        print(f"MLflow UI for {store}: {url}  (Ctrl-C stops it)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
