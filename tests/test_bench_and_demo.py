"""The entry points run end to end: the bare-torch training-step benchmark and the offline demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # spd-method §5: the UNet forward costs 16.8 GFLOP per 32x32 image; a training step ~3x that
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


def test_offline_demo_trains_and_samples(tmp_path):
    from spd_tune.demo import main

    summary = main(["--output", str(tmp_path / "demo"), "--train-iters", "60", "--samples", "8",
                    "--sample-steps", "10", "--batch", "16"])
    assert summary["finite"]
    assert summary["last_loss"] < summary["first_loss"]
    assert 1.5 < summary["data_m"] < 2.5
    for name in ("config.json", "summary.json", "samples.png", "model.pt"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert json.loads((tmp_path / "demo" / "config.json").read_text())["train_iters"] == 60
