"""FID costs: Inception feature throughput and the Fréchet distance at d = 2048.

    PYTHONPATH=. python bench/fid.py                     # random-weight network: same cost as the real one
    PYTHONPATH=. python bench/fid.py --fid-weights PATH  # the real weights
    PYTHONPATH=. python bench/fid.py --compare-scipy     # also pytorch-fid's scipy sqrtm route (slow on CPUs)

The Fréchet distance is timed on covariances of real rank (from random features of N > d samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spd_tune.fid import FeatureSpec, InceptionFeatures, frechet_distance  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=64, help="timed images per feature size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dims", type=int, nargs="+", default=[2048, 192])
    p.add_argument("--fid-weights", default=None)
    p.add_argument("--compare-scipy", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    result: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else
                    f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__, "img_per_s": {}}
    for dims in args.dims:
        spec = FeatureSpec(dims=dims, weights="pytorch-fid" if args.fid_weights else "random",
                           weights_path=args.fid_weights)
        features = InceptionFeatures(spec, device=args.device, batch_size=args.batch_size)
        features(images[: args.batch_size])  # warm-up
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        features(images)
        if args.device == "cuda":
            torch.cuda.synchronize()
        result["img_per_s"][dims] = args.images / (time.perf_counter() - start)
        print(f"Inception to {dims}-d ({features.metric_name} features): {result['img_per_s'][dims]:.1f} img/s")
    d = 2048
    a, b = rng.normal(size=(2 * d, d)), rng.normal(size=(2 * d, d)) * 1.1 + 0.05
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    start = time.perf_counter()
    ours = frechet_distance(mu1, s1, mu2, s2)
    result["fd_eigh_s"] = time.perf_counter() - start
    print(f"Fréchet distance d={d}, eigh route: {result['fd_eigh_s']:.2f} s")
    if args.compare_scipy:
        from pytorch_fid.fid_score import calculate_frechet_distance

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = calculate_frechet_distance(mu1, s1, mu2, s2)
        result["fd_scipy_s"] = time.perf_counter() - start
        result["fd_relative_difference"] = abs(ours - theirs) / abs(theirs)
        print(f"Fréchet distance d={d}, pytorch-fid (scipy sqrtm): {result['fd_scipy_s']:.2f} s "
              f"({result['fd_scipy_s'] / result['fd_eigh_s']:.1f}x the eigh route; values agree to "
              f"{result['fd_relative_difference']:.1e})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
