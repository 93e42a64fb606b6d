"""cluster/slurm/search-classic.sbatch run for real on this machine, to the champion: stand-in ``srun`` (runs the
command on this machine) and ``scontrol`` (names it as the one node) on 127.0.0.1, a tiny space. The script starts
Ray with the job's own ports and temp dir and stops what it started, by PID. (search.sbatch is checked statically
and through Ray's parsers only: ``ray symmetric-run`` refuses to start while any Ray runs here, and ends with
``ray stop``, which would stop every Ray on the machine.)"""

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
SRUN = """#!/bin/bash
# stand-in: drop srun's options and run the command here
while [ $# -gt 0 ]; do
  case "$1" in
    -w|-N|-n|-c) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""
SCONTROL = """#!/bin/bash
# stand-in: `scontrol show hostnames LIST` names this machine
[ "$1 $2" = "show hostnames" ] && echo localhost
"""
TINY = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.32", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.32", "search.asha.max_kimg=0.32", "search.trials=1", "search.final.top_k=1",
    "search.final.samples=16", "search.final.sampler_steps=4", "search.final.seeds=1", "search.posthoc.enabled=false",
]


def _job_id_with_free_ports() -> int:
    """A job id whose block of 100 ports (the script's: 20000 + (id % 400) * 100) is free on 127.0.0.1 now."""
    for _ in range(100):
        job = random.randrange(100000, 999999)
        base = 20000 + (job % 400) * 100
        try:
            for port in range(base, base + 100):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return job
        except OSError:
            continue
    raise RuntimeError("no free block of 100 ports")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_classic_sbatch_script_runs_a_search_to_its_champion(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    job = _job_id_with_free_ports()
    base = 20000 + (job % 400) * 100
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(PATH=f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}", SLURM_JOB_ID=str(job),
               SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1", SLURM_CPUS_PER_TASK="2",
               SLURM_GPUS_PER_TASK="0", HEAD_IP="127.0.0.1", SPACE="demo", OUTPUT=str(tmp_path / "runs"))
    sets = [a for item in [*TINY, f"train.data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", item)]
    try:
        done = subprocess.run(["bash", str(ROOT / "cluster" / "slurm" / "search-classic.sbatch"), *sets], env=env,
                              capture_output=True, text=True, timeout=540, start_new_session=True)
        (tmp_path / "job.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        root = tmp_path / "runs" / "demo"
        assert f"finished: {root / 'report.html'}" in done.stdout
        assert "--resume auto: no search yet; starting one" in done.stdout and "champion: trial" in done.stdout
        assert (root / "search_finished.json").is_file() and (root / "best" / "model.pt").is_file()
        deadline = time.time() + 30  # the script stopped its Ray by PID: its ports close
        while time.time() < deadline and _listening(base):
            time.sleep(0.5)
        assert not _listening(base)
    finally:
        shutil.rmtree(f"/tmp/ray-{job}", ignore_errors=True)
