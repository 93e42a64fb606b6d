"""The benchmarks run end to end, with nothing but torch on the bare-step path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_train_step_runs_with_torch_alone(tmp_path):
    out = tmp_path / "bench.json"
    # the packages a bare GPU machine may lack are made unimportable, not just checked afterwards
    code = f"""
import importlib.abc, runpy, sys
BLOCKED = ("ray", "mlflow", "optuna", "scipy", "pytorch_fid", "yaml")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["train_step.py", "--preset", "micro", "--batch", "4", "--iters", "2", "--warmup", "1",
            "--json", {str(out)!r}]
runpy.run_path({str(ROOT / "bench" / "train_step.py")!r}, run_name="__main__")
assert not [m for m in BLOCKED if m in sys.modules]
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["img_per_s"] > 0 and 0 < result["noising_share"] < 1
    assert result["gflop_per_img"] > 0 and result["mfu"] is None  # no MFU without a GPU peak
    assert "img/s" in proc.stdout and "of the step" in proc.stdout


def test_cifar10_step_flops_match_the_reference_cost_model(tmp_path):
    # the reference cost model: the UNet forward costs 16.8 GFLOP per 32x32 image; a training step ~3x that
    code = """
import torch
from spd_tune.schedule import SPDSchedule
from spd_tune.unet import UNet
from torch.utils.flop_counter import FlopCounterMode
net = UNet.from_preset("cifar10")
x = torch.randn(1, 3, 32, 32)
with FlopCounterMode(display=False) as c, torch.no_grad():
    net(x, torch.tensor([10.0]))
print(c.get_total_flops() / 1e9)
"""
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout.strip()) - 16.8) < 0.3


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_times_the_step_inside_ray_train_workers(tmp_path, ray_cluster):
    out = tmp_path / "bench.json"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--preset", "micro", "--batch", "8",
                           "--iters", "2", "--warmup", "1", "--workers", "2", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ray_workers"] == 2 and result["ray_img_per_s_per_worker"] > 0
    assert "Ray Train, 2 worker(s)" in proc.stdout


def test_device_check_cpu_smoke_runs_every_section_without_ray_mlflow_or_optuna(tmp_path):
    """The prepared GPU check (bench/device_check.py) cannot rot between the sessions that have a GPU: its CPU smoke
    run goes through every section with what the lent machine has (torch, this checkout, pytorch-fid's Inception
    class, numpy, scipy, yaml) and nothing else."""
    out = tmp_path / "out"
    code = f"""
import importlib.abc, runpy, sys
BLOCKED = ("ray", "mlflow", "optuna")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["device_check.py", {str(out)!r}, "--cpu-smoke"]
try:
    runpy.run_path({str(ROOT / "bench" / "device_check.py")!r}, run_name="__main__")
except SystemExit as done:
    assert done.code == 0, done.code
"""
    proc = _run(code, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.md"]  # nothing else comes back
    result = json.loads((out / "device_check.json").read_text())
    assert result["errors"] == {} and result["environment"]["smoke"] is True
    assert {"train_step", "sampling", "fid_features", "train_loop"} <= set(result)
    assert all(r["img_per_s"] > 0 and 0 < r["noising_share"] < 1 for r in result["train_step"])
    for kind in ("ancestral", "ddim"):
        s = result["sampling"][kind]
        assert s["step_ms"] > 0 and s["sampler_own_ms"] > 0 and s["host_generator_noise_own_ms"] > 0
    assert result["sampling"]["noise_max_abs_diff_vs_cpu"] == 0.0  # on CPU the "device" is the CPU itself
    assert result["fid_features"]["img_per_s"] > 0
    loop = result["train_loop"]
    assert loop["checkpoints"] == 1 and loop["kimg"] > 0 and len(loop["metric"]) == 1  # evaluated at the end
    table = (out / "device_check.md").read_text()
    for section in ("train_step", "sampling", "fid_features", "train_loop"):
        assert f"| {section} |" in table
