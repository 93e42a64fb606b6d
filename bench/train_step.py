"""Time one full SPD training step: noising + UNet forward + loss + backward + AdamW.

Needs nothing but torch and this checkout (no Ray, MLflow, Optuna, numpy or scipy on this path), so it
runs on a bare GPU machine:

    PYTHONPATH=. python bench/train_step.py --preset cifar10 --batch 128
    PYTHONPATH=. python bench/train_step.py --preset cifar10 --batch 256 --compile --json out.json

Prints img/s, the share of the step spent in the Fourier-space noising (q_sample), and on a GPU the
model-FLOPs utilisation (FLOPs of forward + backward counted by torch.utils.flop_counter).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spd_tune.core.flops import peak_bf16_flops  # noqa: E402
from spd_tune.schedule import DDPMSchedule, SPDSchedule  # noqa: E402
from spd_tune.unet import UNet, parameter_count  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, cuDNN autotune)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--schedule", choices=["spd", "ddpm"], default="spd")
    p.add_argument("--steps", type=int, default=1000, help="diffusion steps T")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for GPUs")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on for GPUs")
    p.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=None, help="default: on for GPUs")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=0, help="also time the step inside N Ray Train workers (DDP), "
                                                           "1 CPU and 1 thread each, against the bare step on 1 thread")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def count_step_flops(model, schedule, x0, t, noise, autocast) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, autocast():
        schedule.loss(model, x0, t, noise).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run(args: argparse.Namespace, prepare=None) -> dict:
    """Time the step in this process; ``prepare`` wraps the network (Ray Train's prepare_model: DDP)."""
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    bf16 = gpu if args.bf16 is None else args.bf16
    channels_last = gpu if args.channels_last is None else args.channels_last
    fused = gpu if args.fused_adamw is None else args.fused_adamw
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    net = UNet.from_preset(args.preset).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    model = prepare(net) if prepare else net
    model = torch.compile(model) if args.compile else model
    size = net.config.image_size
    schedule = SPDSchedule(size, args.steps) if args.schedule == "spd" else DDPMSchedule(args.steps)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    gen = torch.Generator(device).manual_seed(0)
    x0 = (torch.rand(args.batch, 3, size, size, device=device, generator=gen) * 2 - 1).contiguous(
        memory_format=memory_format)

    def draw():
        t = torch.randint(0, schedule.steps, (args.batch,), device=device, generator=gen)
        return t, torch.randn(x0.shape, device=device, generator=gen)

    def step():
        t, noise = draw()
        with autocast():
            loss = schedule.loss(model, x0, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def noising():
        t, noise = draw()
        with autocast():
            schedule.q_sample(x0, t, noise).contiguous(memory_format=memory_format)

    def timed(fn, iters: int) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        return (time.perf_counter() - start) / iters

    for _ in range(args.warmup):
        step()
    step_s = timed(step, args.iters)
    timed(noising, 3)
    noise_s = timed(noising, args.iters)
    flops = count_step_flops(net, schedule, x0, *draw(), autocast)
    peak = peak_bf16_flops(device) if bf16 else None
    result = {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "preset": args.preset,
        "params_m": parameter_count(net) / 1e6,
        "batch": args.batch,
        "schedule": args.schedule,
        "T": args.steps,
        "bf16": bf16,
        "channels_last": channels_last,
        "fused_adamw": fused,
        "compile": args.compile,
        "step_ms": step_s * 1e3,
        "img_per_s": args.batch / step_s,
        "noising_ms": noise_s * 1e3,
        "noising_share": noise_s / step_s,
        "gflop_per_img": flops / args.batch / 1e9,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / peak if peak else None,
    }
    return result


def run_ray_workers(args: argparse.Namespace) -> dict:
    """The same step inside Ray Train workers (start-up and warm-up excluded); rank 0's figures."""
    import os
    import tempfile

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                              os.environ.get("PYTHONPATH")]))
    import ray
    import ray.train
    import ray.train.torch
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # an existing cluster
            ray.init()
        else:
            ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False)
    config = {**vars(args), "workers": 0, "json": None, "threads": 1}
    script = str(Path(__file__).resolve())

    def worker(cfg: dict) -> None:  # loads this file inside the worker rather than pickling its globals
        import runpy

        import ray.train
        import ray.train.torch

        bench = runpy.run_path(script)
        figures = bench["run"](argparse.Namespace(**cfg),
                               prepare=lambda net: ray.train.torch.prepare_model(net, move_to_device=False))
        if ray.train.get_context().get_world_rank() == 0:  # single node: the driver reads the file
            Path(figures_path).write_text(json.dumps(figures))
        ray.train.report({})

    with tempfile.TemporaryDirectory() as storage:
        figures_path = str(Path(storage) / "figures.json")
        TorchTrainer(
            worker, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(storage_path=storage, name="bench"),
        ).fit()
        figures = json.loads(Path(figures_path).read_text())
    ray.shutdown()
    return figures


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.workers:
        args.threads = 1  # Ray gives a 1-CPU worker one thread; the baseline gets the same
    result = run(args)
    if args.workers:
        ray_figures = run_ray_workers(args)
        result["ray_workers"] = args.workers
        result["ray_img_per_s_per_worker"] = ray_figures["img_per_s"]
        result["ray_overhead"] = ray_figures["step_ms"] / result["step_ms"] - 1
        print(f"Ray Train, {args.workers} worker(s) x 1 thread: {ray_figures['img_per_s']:.1f} img/s per worker, "
              f"step {ray_figures['step_ms']:.1f} ms vs {result['step_ms']:.1f} ms bare "
              f"(overhead {result['ray_overhead']:+.1%})")
    mfu = f"  MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    print(
        f"{result['device']} | {result['preset']} batch {result['batch']} {result['schedule']} T={result['T']} "
        f"bf16={result['bf16']} channels_last={result['channels_last']} fused={result['fused_adamw']} "
        f"compile={result['compile']}\n"
        f"  {result['img_per_s']:.1f} img/s  step {result['step_ms']:.1f} ms  "
        f"noising {result['noising_ms']:.2f} ms ({result['noising_share']:.2%} of the step)  "
        f"{result['gflop_per_img']:.1f} GFLOP/img  {result['achieved_tflops']:.3f} TFLOP/s{mfu}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
