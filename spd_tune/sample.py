"""Sample a checkpoint into a .npz of uint8 images, one seed per image.

    python -m spd_tune.sample CHECKPOINT --n 10000 --steps 100 --out samples.npz

The file holds ``images`` (uint8 [N, H, W, 3], rounded as the FID reference is) and ``seeds``;
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
from .core.samplers import SamplerConfig, sample
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


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--steps", type=int, default=None, help="sampler steps K (default: all T)")
    p.add_argument("--sampler", choices=["ancestral", "ddim"], default="ancestral")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the network")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    return run_main(lambda: _write_samples(args), also=(ValueError,))


def _write_samples(args) -> int:
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be positive")
    sampler = SamplerConfig(args.sampler, steps=args.steps, eta=args.eta)
    images, seeds = sample_checkpoint(args.checkpoint, args.n, sampler=sampler, first_seed=args.seed,
                                      batch_size=args.batch_size, device=args.device,
                                      use_ema=not args.no_ema, bf16=args.bf16, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "sampler": args.sampler, "steps": args.steps,
            "eta": args.eta, "ema": not args.no_ema}
    np.savez(args.out, images=images, seeds=seeds, meta=json.dumps(meta))
    print(f"wrote {len(images)} images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
