"""The search's command line, apart from what it runs, so that other tools (``python -m spd_tune.cluster check``)
can read a search command without importing torch or Ray."""

from __future__ import annotations

import argparse

from ..cli import Parser

DESCRIPTION = "The search service: ``python -m spd_tune.search {cifar10 | imagenet64 | demo | SPACE.yaml}``."


def parser() -> Parser:
    p = Parser(prog="python -m spd_tune.search", description=DESCRIPTION)
    p.add_argument("space", help="cifar10, imagenet64, demo, or a path to a space YAML")
    p.add_argument("--trials", type=int, help="trials to run (search.trials)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (search.max_concurrent; default: as many as "
                   "the cluster holds)")
    p.add_argument("--data-dir", help="the data folder (train.data.root): a folder of images for the folder space, "
                   "ImageNet-64's batches, or where CIFAR-10 is or goes")
    p.add_argument("--fid-weights", metavar="PATH", help="pytorch-fid's Inception weights file "
                   "(pt_inception-2015-12-05-6726825d.pth), checked before anything starts (default: "
                   "SPD_TUNE_FID_WEIGHTS, else the torch hub cache, else a download)")
    p.add_argument("--budget-hours", type=float, help="resource-hours (GPU, or CPU without GPUs) the trials may "
                   "spend: no new trial starts once it would exceed them (search.budget_hours)")
    p.add_argument("--output", help="where the search writes (default: ./spd_runs)")
    p.add_argument("--storage-path", help="Ray Tune/Train results and checkpoints: a local path, or on a multi-node "
                   "cluster a bucket URI (s3://, gs://) or a shared mount (default: SPD_TUNE_STORAGE, else --output)")
    p.add_argument("--shared-storage", action="store_true", default=None,
                   help="the local --storage-path is a file system every node mounts at the same place (NFS)")
    p.add_argument("--optuna-storage", help="the Optuna study's database URL (default: SQLite under --output)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under --output)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", nargs="?", const="yes", default=None, metavar="auto",
                   help="continue an interrupted search; --resume auto continues the search if it exists and starts "
                        "it if not (what a RayJob retry or a requeued SLURM job runs)")
    p.add_argument("--gpus", type=int, metavar="N", help="with --dry-run: the wall-clock estimate on N GPUs "
                   "(default: the space's GPUs per trial times the trials it runs at once)")
    p.add_argument("--dry-run", action="store_true", help="print the space, the resource plan and the paths; exit")
    p.add_argument("--verbose", action="store_true", help="print Ray's and the workers' output here instead of "
                   "<output>/<space>/ray.log")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the space file, e.g. train.optim.warmup_kimg=1 or search.trials=20")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; a bare ``--resume`` goes last, so that it never takes the space's name as its value."""
    p = parser()
    args = p.parse_args(_resume_last(argv))
    if args.resume not in (None, "yes", "auto"):
        p.error(f"--resume takes nothing or 'auto', not {args.resume!r}")
    return args


def _resume_last(argv: list[str]) -> list[str]:
    """``--resume`` takes an optional ``auto``: a bare --resume goes last, so that it never takes the space's name
    as its value (``--resume cifar10``)."""
    out, rest = [], []
    for i, arg in enumerate(argv):
        bare = arg == "--resume" and (i + 1 == len(argv) or argv[i + 1] != "auto")
        (rest if bare else out).append(arg)
    return out + rest
