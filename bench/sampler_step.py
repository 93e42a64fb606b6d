"""Time the sampler's own work per step: noise, Fourier-space update, tables; the network is near-free.

Needs nothing but torch and this checkout. Compares the sampler's noise drawn on the device (core/noise.py, a
counter-based hash) with the baseline it replaced, one CPU torch.Generator per image copied to the device, in
the same run:

    PYTHONPATH=. python bench/sampler_step.py --batch 64 --steps 4000 --k 100
    PYTHONPATH=. python bench/sampler_step.py --batch 1000 --image-size 32 --json out.json   # on a GPU

``--unet PRESET`` also times that network's forward pass at the same batch, so the sampler's share of a real
step is (sampler ms) / (sampler ms + forward ms).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spd_tune.core import samplers  # noqa: E402
from spd_tune.core.samplers import SamplerConfig, sample  # noqa: E402
from spd_tune.core.schedule import SPDSchedule  # noqa: E402


class HostGeneratorNoise:
    """The baseline: one CPU generator per image, a block of steps drawn per call and copied to the device."""

    BLOCK_ELEMENTS = 1 << 16

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.block = max(1, min(64, self.BLOCK_ELEMENTS // max(1, math.prod(self.shape))))
        self.buffer: torch.Tensor | None = None
        self.used = self.block

    def draw(self) -> torch.Tensor:
        if self.used == self.block:
            block = [torch.randn((self.block, *self.shape), generator=g) for g in self.generators]
            self.buffer = torch.stack(block, dim=1).to(self.device, self.dtype, non_blocking=True)
            self.used = 0
        self.used += 1
        return self.buffer[self.used - 1]


class NearFreeModel(torch.nn.Module):
    """eps = x / 2: one elementwise kernel, so the step time is the sampler's own."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * 0.5


@contextmanager
def noise_source(cls):
    saved = samplers.ImageNoise
    samplers.ImageNoise = cls
    try:
        yield
    finally:
        samplers.ImageNoise = saved


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model, schedule, batch: int, shape, config: SamplerConfig, device, repeats: int) -> float:
    """Milliseconds per sampler step, the best of ``repeats`` runs (after one warm-up run)."""
    seeds = list(range(batch))
    best = math.inf
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        sample(model, schedule, seeds, shape, config=config, device=device)
        sync(device)
        if i:
            best = min(best, (time.perf_counter() - start) / config.steps * 1e3)
    return best


def time_forward(preset: str, batch: int, image_size: int, device, repeats: int, bf16: bool) -> float:
    from spd_tune.core.unet import UNet

    model = UNet.from_preset(preset, image_size=image_size).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    t = torch.full((batch,), 500.0, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    best = math.inf
    with torch.no_grad(), autocast:
        for i in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            model(x, t)
            sync(device)
            if i:
                best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    schedule = SPDSchedule(args.image_size, args.steps, m=2.0, c1=1.59, c2=0.0086)
    shape = (3, args.image_size, args.image_size)
    model = NearFreeModel()
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "batch": args.batch, "image_size": args.image_size, "T": args.steps,
           "k": args.k, "torch": torch.__version__}
    for kind in ("ancestral", "ddim"):
        config = SamplerConfig(kind, steps=args.k, eta=1.0 if kind == "ddim" else 0.0)
        with noise_source(HostGeneratorNoise):
            baseline = time_sampling(model, schedule, args.batch, shape, config, device, args.repeats)
        device_noise = time_sampling(model, schedule, args.batch, shape, config, device, args.repeats)
        out[kind] = {"host_generators_ms": baseline, "device_noise_ms": device_noise,
                     "speedup": baseline / device_noise}
    if args.unet:
        forward = time_forward(args.unet, args.batch, args.image_size, device, args.repeats, device.type == "cuda")
        own = out["ancestral"]["device_noise_ms"]
        out["forward_ms"] = {"preset": args.unet, "ms": forward, "sampler_share": own / (own + forward)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4000, help="diffusion steps T of the schedule")
    p.add_argument("--k", type=int, default=100, help="sampler steps timed (respaced from T)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--unet", default=None, help="also time this preset's forward pass (e.g. cifar10)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out = run(args)
    for kind in ("ancestral", "ddim"):
        r = out[kind]
        print(f"{kind:<9} batch {args.batch}, T={args.steps}, {args.k} steps: host generators "
              f"{r['host_generators_ms']:.2f} ms/step, device noise {r['device_noise_ms']:.2f} ms/step "
              f"({r['speedup']:.2f}x)")
    if "forward_ms" in out:
        f = out["forward_ms"]
        print(f"{f['preset']} forward {f['ms']:.2f} ms; the sampler's own work is {100 * f['sampler_share']:.1f}% "
              "of an ancestral step")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
