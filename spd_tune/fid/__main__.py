"""Reference statistics and scores from the command line.

    python -m spd_tune.fid ref cifar10 --data-dir ~/data
    python -m spd_tune.fid score samples.npz --ref cifar10 --data-dir ~/data
    python -m spd_tune.fid score samples.npz --ref demo --proxy      # offline, random-weight proxy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..cli import Parser, run_main
from ..data import DATASETS, REGISTRY, DataConfig, load_images
from ..errors import DataError
from .inception import FeatureSpec, InceptionFeatures
from .reference import reference_stats, score


def _parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data-dir", help="data folder of the reference data set (cifar10: downloaded into "
                                           "$SPD_TUNE_DATA or ~/.cache/spd_tune/data when not given)")
    common.add_argument("--no-data-download", action="store_true", help="cifar10: never download the data set")
    common.add_argument("--split", default="train", help="reference split (default: train, as the SPD reference)")
    common.add_argument("--n", type=int, default=None, help="first N reference images (default: all)")
    common.add_argument("--image-size", type=int, default=None, help="image size (default: the data set's)")
    common.add_argument("--seed", type=int, default=1, help="demo data only: its seed (training uses 0, so the "
                                                            "default reference is disjoint from it)")
    common.add_argument("--dims", type=int, default=2048, choices=[64, 192, 768, 2048])
    common.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (else SPD_TUNE_FID_WEIGHTS, "
                                              "the torch hub cache, then a download)")
    common.add_argument("--no-download", action="store_true", help="never download the weights")
    common.add_argument("--proxy", action="store_true", help="seeded random Inception weights: an offline proxy, "
                                                             "reported as proxy_fd<dims>, never as fid")
    common.add_argument("--cache-dir", help="where reference statistics are cached (default: ~/.cache/spd_tune)")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--batch-size", type=int, default=100)
    p = Parser(prog="python -m spd_tune.fid", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("ref", parents=[common], help="compute and cache reference statistics")
    ref.add_argument("dataset", choices=DATASETS)
    sc = sub.add_parser("score", parents=[common], help="score a samples .npz against a reference")
    sc.add_argument("samples", type=Path, help=".npz with 'images' (or 'arr_0'): uint8 [N, H, W, 3]")
    sc.add_argument("--ref", required=True, choices=DATASETS)
    return p


def _reference(args, dataset: str, image_size: int | None):
    size = args.image_size or image_size or REGISTRY[dataset].size or 32
    data = DataConfig(dataset, root=args.data_dir, image_size=size, split=args.split, limit=args.n, seed=args.seed,
                      download=not args.no_data_download)
    spec = FeatureSpec(dims=args.dims, weights="random" if args.proxy else "pytorch-fid",
                       weights_path=args.fid_weights, download=not args.no_download)
    images = load_images(data)  # a missing data folder fails before the network is built
    features = InceptionFeatures(spec, device=args.device, batch_size=args.batch_size)
    stats, path = reference_stats(images, features, args.cache_dir)
    return features, stats, path


def _load_samples(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"samples file not found: {path}")
    with np.load(path) as f:
        key = "images" if "images" in f else "arr_0" if "arr_0" in f else None
        if key is None:
            raise DataError(f"{path} has no 'images' (or 'arr_0') array")
        images = f[key]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: samples must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def run() -> int:
        if args.command == "ref":
            features, stats, path = _reference(args, args.dataset, None)
            print(f"{features.metric_name} reference statistics of {stats.n} {args.dataset} images: {path}")
        else:
            samples = _load_samples(args.samples)
            features, ref, _ = _reference(args, args.ref, samples.shape[1])
            value = score(features.stats(samples), ref)
            print(f"{features.metric_name} = {value:.4f}  ({len(samples)} samples vs {ref.n} {args.ref} images)")
        return 0

    return run_main(run, also=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())
