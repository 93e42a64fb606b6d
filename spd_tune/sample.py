"""Sample a checkpoint into a .npz of uint8 images, one seed per image.

    python -m spd_tune.sample CHECKPOINT --n 10000 --steps 100 --out samples.npz

A search's ``best/model.pt`` carries the sampling its champion was chosen with (sampler, steps, eta): each of
``--sampler``, ``--steps`` and ``--eta`` not given is taken from there; other checkpoints default to the
ancestral sampler at all T steps. The file holds ``images`` (uint8 [N, H, W, 3], rounded as the FID reference
is) and ``seeds``;
``python -m spd_tune.fid score samples.npz --ref cifar10`` scores it.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .cli import Parser, run_main
from .core.checkpoint import load_checkpoint
from .core.samplers import SAMPLERS, SamplerConfig, sample, uses_eta
from .data import to_uint8


def sample_checkpoint(path: str | Path, n: int, *, sampler: SamplerConfig, first_seed: int = 0,
                      batch_size: int = 256, device: str = "cpu", use_ema: bool = True, bf16: bool = False,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W, 3], seeds [n]); image i uses seed first_seed + i whatever the batch size."""
    ckpt = load_checkpoint(path)
    model, schedule = ckpt.build(use_ema=use_ema, device=device)
    size, channels = ckpt.unet.image_size, ckpt.unet.in_channels
    seeds = np.arange(first_seed, first_seed + n, dtype=np.int64)
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in range(0, n, batch_size):
        batch = seeds[start: start + batch_size].tolist()
        with autocast:
            images = sample(model, schedule, batch, (channels, size, size), config=sampler, device=device)
        out[start: start + len(batch)] = to_uint8(images).cpu().numpy()
        if progress:
            print(f"\r{min(start + batch_size, n)}/{n} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out, seeds


def saved_sampling(path: str | Path) -> dict:
    """The sampling a checkpoint was exported with (a search's champion), or {}."""
    return dict(load_checkpoint(path, mmap=True).extra.get("sampling") or {})


def resolve_sampler(saved: dict, sampler: str | None, steps: int | None, eta: float | None) -> SamplerConfig:
    """Each field from its flag when given, else from the checkpoint's saved sampling, else the default
    (ancestral at all T steps); eta applies to DDIM only."""
    kind = sampler or saved.get("sampler") or SamplerConfig().kind
    steps = steps if steps is not None else saved.get("steps")
    if eta is None:
        eta = saved.get("eta", 0.0) if kind == saved.get("sampler") else 0.0
    return SamplerConfig.of(kind, steps=steps, eta=eta)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a model file: a search's best/model.pt, or a run's checkpoint.pt")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps K (default: the checkpoint's saved sampling, else all T)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="default: the checkpoint's saved sampling, else ancestral")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM noise, 0: deterministic (default: the checkpoint's saved sampling, else 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--batch-size", type=int, default=256, help="images per network call (default: 256)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when this machine has a GPU, else cpu)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the network")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--out", required=True, type=Path,
                   help="the .npz to write: uint8 images (N, H, W, C) under 'images', and the sampling used")
    args = p.parse_args(argv)
    return run_main(lambda: _write_samples(args), also=(ValueError,))


def _write_samples(args) -> int:
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be positive")
    sampler = resolve_sampler(saved_sampling(args.checkpoint), args.sampler, args.steps, args.eta)
    if args.eta and not uses_eta(sampler.kind):
        raise ValueError("--eta applies to the DDIM sampler only (add --sampler ddim)")
    images, seeds = sample_checkpoint(args.checkpoint, args.n, sampler=sampler, first_seed=args.seed,
                                      batch_size=args.batch_size, device=args.device,
                                      use_ema=not args.no_ema, bf16=args.bf16, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "sampler": sampler.kind, "steps": sampler.steps,
            "eta": sampler.eta, "ema": not args.no_ema}
    np.savez(args.out, images=images, seeds=seeds, meta=json.dumps(meta))
    print(f"wrote {len(images)} images to {args.out} ({sampler.kind}, "
          f"{sampler.steps or 'all T'} steps{f', eta {sampler.eta:g}' if uses_eta(sampler.kind) else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
