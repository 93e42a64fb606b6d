"""``python -m spd_tune.train``: train one SPD model with Ray Train (DDP on any number of workers).

    python -m spd_tune.train demo --workers 2
    python -m spd_tune.train cifar10 --set optim.lr=2e-4 --set total_kimg=20000 --gpus-per-worker 1 --workers 8
"""

from __future__ import annotations

import json
import sys

from ..cli import Parser, run_main
from ..cluster import Storage
from ..fid import resolve_fid_weights
from .config import load_train_config
from .driver import RunFailed, plan, run_training

TRAIN_OUTPUT = "spd_train"


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.train",
                                description="Train one SPD model with Ray Train (DDP on any number of workers).")
    p.add_argument("config", help="a search space name (demo, cifar10, imagenet64) or a YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. optim.lr=2e-4")
    p.add_argument("--workers", type=int, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs each worker holds (resources.gpus_per_worker)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs each worker holds (resources.cpus_per_worker)")
    p.add_argument("--output", help=f"where runs are written (default: ./{TRAIN_OUTPUT}, apart from the searches' "
                   "./spd_runs)")
    p.add_argument("--name", help="run name; re-using it resumes that run")
    p.add_argument("--data-dir", help="the data folder (data.root): a folder of images, ImageNet-64's batches, or "
                   "where CIFAR-10 is or goes")
    p.add_argument("--storage-path", help="Ray Train results and checkpoints (default: SPD_TUNE_STORAGE, else "
                   "--output); on a multi-node cluster a bucket URI or a shared mount")
    p.add_argument("--shared-storage", action="store_true", default=None,
                   help="the local --storage-path is mounted at the same place on every node (NFS)")
    p.add_argument("--address", help="join this Ray cluster: 'auto' on a cluster's head (default: RAY_ADDRESS, "
                   "else start a local Ray)")
    p.add_argument("--fid-weights", metavar="PATH", help="pytorch-fid's Inception weights file "
                   "(pt_inception-2015-12-05-6726825d.pth), checked before anything starts (default: "
                   "SPD_TUNE_FID_WEIGHTS, else the torch hub cache, else a download)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    args = p.parse_args(argv)
    return run_main(lambda: _train(args))


def _train(args) -> int:
    if args.fid_weights is not None:  # the file named, and the real one, before anything else
        resolve_fid_weights(args.fid_weights, download=False)
    # a run of its own never writes into a search's folder, unless its config or --output says so
    cfg = load_train_config(args.config, args.set, default_output=TRAIN_OUTPUT, output=args.output, name=args.name,
                            **{"resources.workers": args.workers, "resources.gpus_per_worker": args.gpus_per_worker,
                               "resources.cpus_per_worker": args.cpus_per_worker, "data.root": args.data_dir,
                               "eval.features.weights_path": args.fid_weights})
    if args.dry_run:
        print(cfg.to_json())
        print(plan(cfg))
        return 0
    print(plan(cfg), flush=True)
    storage = Storage.resolve(args.storage_path, args.shared_storage, cfg.output)
    try:
        result, metric, best = run_training(cfg, args.address, storage)
    except RunFailed as err:
        print(f"error: the run failed ({err}); it resumes from its last checkpoint when started again with the "
              f"same --name", file=sys.stderr)
        return 1
    final = result.metrics or {}
    if final.get("diverged"):
        print(f"error: the run diverged (non-finite loss) at {final.get('kimg', 0):g} kimg; its checkpoints before that "
              f"are kept", file=sys.stderr)
        return 1
    print(json.dumps({k: final.get(k) for k in ("kimg", "loss", metric)}))
    if best is not None:
        print(f"best checkpoint ({metric}): {best.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
