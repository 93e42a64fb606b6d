"""Starting a training run on Ray: the TorchTrainer of one run, the Ray connection, the train CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .cli import Parser
from .cluster import Storage
from .config import ConfigError, TrainConfig, load_train_config
from .data import DataError, check_available
from .evaluation import metric_name
from .fid import WeightsError
from .train import evaluation_steps, kimg_at, total_steps, train_loop_per_worker

USER_ERRORS = (ConfigError, DataError, WeightsError, CheckpointError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS); otherwise start a local Ray whose dashboard binds
    127.0.0.1, which Train needs to clean up a stopped run's placement group."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    port = free_port()
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)


def check_resources(cfg: TrainConfig) -> None:
    """A request the cluster (with its autoscaler) can never satisfy is an error now, not a wait for ever."""
    from .cluster import check_fits

    check_fits(cfg.resources.per_run(), f"the run ({cfg.resources.workers} workers)",
               "lower resources.workers or the per-worker resources, or use a larger cluster")


def build_trainer(cfg: TrainConfig, metric: str, *, name: str | None = None, storage_path: str | None = None,
                  callbacks: list | None = None):
    import ray.train
    from ray.train.torch import TorchTrainer

    r = cfg.resources
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                               resources_per_worker=r.per_worker()),
        run_config=ray.train.RunConfig(
            name=name or cfg.name,  # a fixed name: a re-run with the same name resumes from its last checkpoint
            storage_path=storage_path or cfg.output,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                         checkpoint_score_attribute=metric,
                                                         checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks or None,
        ),
    )


def plan(cfg: TrainConfig) -> str:
    evals = ", ".join(f"{kimg_at(s, cfg):g}" for s in evaluation_steps(cfg))
    r = cfg.resources
    return "\n".join([
        f"run {cfg.name}: {cfg.total_kimg:g} kimg = {total_steps(cfg)} steps of {cfg.batch} images "
        f"({cfg.per_worker_batch} per worker x {r.workers} workers x {cfg.accumulation} accumulation)",
        f"workers: {r.workers} x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)",
        f"evaluation + checkpoint at kimg: {evals}",
        f"writes: {Path(cfg.output) / cfg.name}",
    ])


def check_resumable(cfg: TrainConfig, storage: Storage) -> None:
    """Re-using a run name resumes that run, so its checkpoints must hold the same network and process."""
    from .checkpoint import load_checkpoint

    if storage.is_uri:
        return
    found = sorted((Path(storage.path) / cfg.name).glob("step_*/checkpoint.pt"))
    if not found:
        return
    state = load_checkpoint(found[-1], mmap=True)
    for what, theirs, ours in (("model", state.unet, cfg.unet), ("process", state.process, cfg.process)):
        if theirs != ours:
            fields = [f for f in dataclasses.fields(ours) if getattr(theirs, f.name) != getattr(ours, f.name)]
            diff = ", ".join(f"{f.name} {getattr(theirs, f.name)!r} -> {getattr(ours, f.name)!r}" for f in fields)
            raise ConfigError(f"run {cfg.name!r} in {Path(storage.path) / cfg.name} holds checkpoints of another "
                              f"{what} ({diff}); re-using a name resumes that run: pick another --name or --output")


def run_training(cfg: TrainConfig, address: str | None = None, storage: Storage | None = None):
    from .cluster import check_storage
    from .preflight import check_storage_path

    storage = storage or Storage.resolve(None, None, cfg.output)
    check_storage_path(storage.path)
    check_resumable(cfg, storage)
    metric = metric_name(cfg)  # finds (or downloads) the FID weights now, not in the workers
    check_available(cfg.data)
    ensure_ray(address)
    check_resources(cfg)
    check_storage(storage)
    run_dir = Path(cfg.output) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    result = build_trainer(cfg, metric, storage_path=storage.path).fit()
    best = result.get_best_checkpoint(metric, "min") if result.best_checkpoints else None
    return result, metric, best


def train_cli(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.train",
                                description="Train one SPD model with Ray Train (DDP on any number of workers).")
    p.add_argument("config", help="a search space name (demo, cifar10, imagenet64) or a YAML/JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. optim.lr=2e-4")
    p.add_argument("--workers", type=int, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float)
    p.add_argument("--output", help="where runs are written (default: ./spd_runs)")
    p.add_argument("--name", help="run name; re-using it resumes that run")
    p.add_argument("--storage-path", help="Ray Train results and checkpoints (default: SPD_TUNE_STORAGE, else "
                   "--output); on a multi-node cluster a bucket URI or a shared mount")
    p.add_argument("--shared-storage", action="store_true", default=None,
                   help="the local --storage-path is mounted at the same place on every node (NFS)")
    p.add_argument("--address", help="join this Ray cluster: 'auto' on a cluster's head (default: RAY_ADDRESS, "
                   "else start a local Ray)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    args = p.parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.set, output=args.output, name=args.name,
                                **{"resources.workers": args.workers, "resources.gpus_per_worker": args.gpus_per_worker,
                                   "resources.cpus_per_worker": args.cpus_per_worker})
        if args.dry_run:
            print(cfg.to_json())
            print(plan(cfg))
            return 0
        print(plan(cfg), flush=True)
        storage = Storage.resolve(args.storage_path, args.shared_storage, cfg.output)
        result, metric, best = run_training(cfg, args.address, storage)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Ray Train's failure: the workers' tracebacks are in the log above
        import ray.train

        if not isinstance(err, ray.train.TrainingFailedError):
            raise
        lines = [line for line in str(err).splitlines() if line.strip()]
        print(f"error: the run failed ({lines[-1] if lines else type(err).__name__}); it resumes from its last "
              f"checkpoint when started again with the same --name", file=sys.stderr)
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
