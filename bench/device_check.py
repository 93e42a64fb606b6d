"""The prepared device check: every open GPU question in one command, within about 4 minutes on one card.

    python bench/device_check.py OUT_DIR              # on the GPU machine (torch + this checkout only)
    python bench/device_check.py OUT_DIR --cpu-smoke  # the same sections at tiny sizes on CPU (the suite runs it)

Writes OUT_DIR/device_check.json (rewritten after every section, so a run cut off still returns what it
measured) and OUT_DIR/device_check.md (a table for docs/benchmarks.md). Run folders, data and checkpoints go
to a temporary folder, never to OUT_DIR. Needs torch and this checkout, and pytorch-fid's Inception class for
the feature section (put its package folder on PYTHONPATH when it is not installed); not Ray, MLflow or Optuna.

Sections, in the order they run (torch.compile last: its compile time is the least predictable):
  train_step    the cifar10 UNet's training step, bf16 autocast + channels_last + fused AdamW, batches 128 and
                256: img/s, MFU against the card's dense bf16 peak, peak memory, SPD noising's share
  sampling      ancestral (schedule T = 4000) and DDIM (100 steps) at batch 1000: ms per step, split into the
                network's forward pass and the sampler's own work; device noise against host generators
  fid_features  Inception to pool3 at batch 500 (random weights cost the same as the real ones): img/s
  train_loop    the real per-worker loop (run_worker in-process, as Ray Train runs it) for about 2 kimg of the
                cifar10 preset on generated 32 px data, with an evaluation and a checkpoint at the end
  compile       the training step under torch.compile, one batch size
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sampler_step  # noqa: E402
import train_step  # noqa: E402

from spd_tune.core.noise import ImageNoise  # noqa: E402
from spd_tune.core.samplers import SamplerConfig  # noqa: E402
from spd_tune.core.schedule import SPDSchedule  # noqa: E402
from spd_tune.core.unet import UNet  # noqa: E402

# (GPU, --cpu-smoke) sizes of every section
SIZES = {
    "preset": ("cifar10", "micro"),
    "train_batches": ((128, 256), (8,)),
    "train_iters": ((20, 5), (2, 1)),  # (timed, warm-up)
    "compile_batch": (256, None),  # no torch.compile in the smoke run: it needs minutes of C++ builds on CPU
    "sample_batch": (1000, 8),
    "sample_steps": ((4000, 100), (100, 10)),  # (ancestral's T, DDIM's K)
    "timed_sampler_steps": (10, 3),
    "fid_batch": (500, 8),
    "fid_images": (2000, 16),
    "loop": (["data.image_size=32", "total_kimg=2.048", "batch=128", "eval.samples=1000", "eval.ref_count=2000",
              "eval.sampler_steps=100", "data.demo_count=4096"],
             ["model.preset=micro", "data.image_size=16", "total_kimg=0.032", "batch=8", "eval.samples=16",
              "eval.ref_count=32", "eval.sampler_steps=3", "eval.features.dims=64", "data.demo_count=64"]),
}


def pick(key: str, smoke: bool):
    return SIZES[key][1 if smoke else 0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_train_step(device: torch.device, smoke: bool, compile: bool = False) -> list[dict]:
    timed, warmup = pick("train_iters", smoke)
    batches = [pick("compile_batch", smoke)] if compile else pick("train_batches", smoke)
    rows = []
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        args = SimpleNamespace(preset=pick("preset", smoke), batch=batch, iters=timed, warmup=warmup + 3 * compile,
                               device=str(device), schedule="spd", steps=1000, bf16=None, channels_last=None,
                               fused_adamw=None, compile=compile, threads=None)
        row = train_step.run(args)
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append(row)
    return rows


def section_sampling(device: torch.device, smoke: bool) -> dict:
    """Per step of sample(): the whole step with the real network, the forward pass alone, and the difference;
    the sampler's own work measured directly with a near-free network, device noise against host generators."""
    batch, steps = pick("sample_batch", smoke), pick("timed_sampler_steps", smoke)
    size = 16 if smoke else 32
    net = UNet.from_preset(pick("preset", smoke)).to(device).eval()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    bf16 = device.type == "cuda"

    def model(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x, t)

    t_ancestral, k_ddim = pick("sample_steps", smoke)
    out = {"batch": batch, "bf16": bf16, "timed_steps": steps}
    # the same seeds draw the same noise here as on the CPU (core/noise.py): the largest difference, two draws
    on_device = ImageNoise(range(8), (3, size, size), device, torch.float32)
    on_cpu = ImageNoise(range(8), (3, size, size), torch.device("cpu"), torch.float32)
    out["noise_max_abs_diff_vs_cpu"] = max((on_device.draw().cpu() - on_cpu.draw()).abs().max().item()
                                           for _ in range(2))
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.full((batch,), 500.0, device=device)
    with torch.no_grad():
        model(x, t)
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            model(x, t)
        sync(device)
    forward_ms = (time.perf_counter() - start) / 3 * 1e3
    out["forward_ms"] = forward_ms
    for kind, schedule_t, k in (("ancestral", t_ancestral, steps), ("ddim", 1000, k_ddim)):
        schedule = SPDSchedule(size, schedule_t, m=2.0, c1=1.59, c2=0.0086)
        config = SamplerConfig(kind, steps=k)
        with torch.no_grad():
            best = sampler_step.time_sampling(model, schedule, batch, (3, size, size), config, device, repeats=1)
            free = sampler_step.time_sampling(sampler_step.NearFreeModel(), schedule, batch, (3, size, size), config,
                                              device, repeats=1)
            with sampler_step.noise_source(sampler_step.HostGeneratorNoise):
                host = sampler_step.time_sampling(sampler_step.NearFreeModel(), schedule, batch, (3, size, size),
                                                  config, device, repeats=1)
        label = f"T={schedule_t} (timed {k} steps)" if kind == "ancestral" else f"{k} steps of T=1000"
        out[kind] = {"schedule": label, "step_ms": best, "sampler_own_ms": free, "sampler_share": free / best,
                     "host_generator_noise_own_ms": host, "forward_share": min(1.0, forward_ms / best)}
    return out


def section_fid_features(device: torch.device, smoke: bool) -> dict:
    import numpy as np

    from spd_tune.fid import FeatureSpec, InceptionFeatures

    batch, count = pick("fid_batch", smoke), pick("fid_images", smoke)
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    features = InceptionFeatures(FeatureSpec(dims=2048, weights="random"), device=device, batch_size=batch)
    features(images[:batch])  # warm-up (cuDNN autotune)
    sync(device)
    start = time.perf_counter()
    features(images)
    sync(device)
    return {"batch": batch, "images": count, "img_per_s": count / (time.perf_counter() - start)}


def section_train_loop(device: torch.device, smoke: bool, work: Path) -> dict:
    from spd_tune.train.config import load_train_config
    from spd_tune.train.loop import run_worker
    from spd_tune.train.session import LocalSession

    overrides = ["data.name=demo", f"data.cache_dir={work / 'cache'}", "eval.features.weights=random",
                 "ema.snapshot_kimg=0", "log_every_s=1000", *pick("loop", smoke)]
    cfg = load_train_config("cifar10", overrides, output=str(work / "runs"), name="device-check")
    session = LocalSession(work / "run", device=device, quiet=True)
    start = time.perf_counter()
    run_worker(cfg, session)
    sync(device)
    last = session.history[-1]
    checkpoints = sorted((work / "run" / "checkpoints").glob("step_*/checkpoint.pt"))
    return {"wall_s": time.perf_counter() - start, "kimg": last.get("kimg"), "img_per_s": last.get("img_per_s"),
            "mfu": last.get("mfu"), "metric": {k: v for k, v in last.items() if k.startswith("proxy_")},
            "eval_s": last.get("eval_s"), "checkpoints": len(checkpoints),
            "checkpoint_mib": checkpoints[-1].stat().st_size / 2**20 if checkpoints else None}


def markdown(results: dict) -> str:
    """The figures as one table, in the shape of docs/benchmarks.md."""
    env = results["environment"]
    lines = [f"Device check on {env['device']}, torch {env['torch']}, {env['date']}" + (" (CPU smoke run: sizes are "
             "tiny, figures mean nothing)" if env["smoke"] else ""), "", "| section | what | figure |", "|---|---|---|"]

    def row(section: str, what: str, figure: str) -> None:
        lines.append(f"| {section} | {what} | {figure} |")

    for r in results.get("train_step", []) + results.get("compile", []):
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        mem = f", peak {r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") else ""
        row("compile" if r["compile"] else "train_step", f"{r['preset']} batch {r['batch']}"
            f"{' compiled' if r['compile'] else ' eager'}",
            f"{r['img_per_s']:.0f} img/s{mfu}{mem}, noising {100 * r['noising_share']:.2f}% of the step")
    s = results.get("sampling")
    if s:
        for kind in ("ancestral", "ddim"):
            k = s[kind]
            row("sampling", f"{kind} {k['schedule']}, batch {s['batch']}",
                f"{k['step_ms']:.2f} ms/step: forward {s['forward_ms']:.2f} ms, sampler's own {k['sampler_own_ms']:.2f}"
                f" ms ({100 * k['sampler_share']:.1f}%); host-generator noise would cost "
                f"{k['host_generator_noise_own_ms']:.2f} ms")
    if s and "noise_max_abs_diff_vs_cpu" in s:
        row("sampling", "device noise against the CPU's, same seeds",
            f"max |diff| {s['noise_max_abs_diff_vs_cpu']:.2e}")
    f = results.get("fid_features")
    if f:
        row("fid_features", f"Inception to pool3, batch {f['batch']}", f"{f['img_per_s']:.0f} img/s")
    loop = results.get("train_loop")
    if loop:
        mfu = f", MFU {100 * loop['mfu']:.1f}%" if loop.get("mfu") else ""
        row("train_loop", f"run_worker, {loop['kimg']} kimg + evaluation + checkpoint",
            f"{loop['wall_s']:.1f} s, {loop['img_per_s'] or 0:.0f} img/s{mfu}, eval {loop['eval_s'] or 0:.1f} s, "
            f"{loop['checkpoints']} checkpoint(s)")
    for name, error in results.get("errors", {}).items():
        row(name, "failed", error.splitlines()[-1].replace("|", "/")[:200])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder for device_check.json and device_check.md")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, offline, about a minute")
    p.add_argument("--only", nargs="+", default=None, help="run only these sections")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --cpu-smoke for the CPU run)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "python": platform.python_version(), "smoke": smoke,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cuda": torch.version.cuda, "threads": torch.get_num_threads()}, "errors": {}, "seconds": {}}

    def write() -> None:
        (args.out / "device_check.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "device_check.md").write_text(markdown(results))

    write()
    with tempfile.TemporaryDirectory(prefix="device-check-") as work:
        sections = {
            "train_step": lambda: section_train_step(device, smoke),
            "sampling": lambda: section_sampling(device, smoke),
            "fid_features": lambda: section_fid_features(device, smoke),
            "train_loop": lambda: section_train_loop(device, smoke, Path(work)),
            "compile": lambda: None if pick("compile_batch", smoke) is None else section_train_step(
                device, smoke, compile=True),
        }
        for name, run in sections.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            print(f"[device_check] {name} ...", flush=True)
            try:
                value = run()
                if value is not None:
                    results[name] = value
            except Exception:  # a section that breaks is recorded; the others still run
                results["errors"][name] = traceback.format_exc(limit=4)
                print(results["errors"][name], file=sys.stderr, flush=True)
            results["seconds"][name] = round(time.perf_counter() - start, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write()
            print(f"[device_check] {name}: {results['seconds'][name]} s", flush=True)
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
