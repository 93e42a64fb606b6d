"""Starting a training run on Ray: the Ray connection, the TorchTrainer of one run, and reading its results.

With train/session.py, the only module that imports ray.train: the search reads Train runs through here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from ..cluster import Storage, check_fits, check_storage, check_storage_path, ensure_ray
from ..core.checkpoint import load_checkpoint
from ..data import check_available
from ..errors import ConfigError
from .averaging import snapshot_plan
from .config import TrainConfig, resolve_on_driver
from .evaluation import resolved_metric_name
from .loop import train_loop_per_worker


class RunFailed(RuntimeError):
    """Ray Train gave up on a run (its workers' tracebacks are in the log); the message is one line."""


def check_resources(cfg: TrainConfig) -> None:
    """A request the cluster (with its autoscaler) can never satisfy is an error now, not a wait for ever."""
    check_fits(cfg.resources.per_run(), f"the run ({cfg.resources.workers} workers)",
               "lower resources.workers or the per-worker resources, or use a larger cluster")


def build_trainer(cfg: TrainConfig, metric: str, *, name: str | None = None, storage_path: str | None = None,
                  callbacks: list | None = None) -> TorchTrainer:
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
    evals = ", ".join(f"{cfg.kimg_at(s):g}" for s in cfg.evaluation_steps())
    r = cfg.resources
    return "\n".join([
        f"run {cfg.name}: {cfg.total_kimg:g} kimg = {cfg.total_steps()} steps of {cfg.batch} images "
        f"({cfg.per_worker_batch} per worker x {r.workers} workers x {cfg.accumulation} accumulation)",
        f"workers: {r.workers} x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)",
        f"evaluation + checkpoint at kimg: {evals}",
        *filter(None, [snapshot_plan(cfg)]),
        f"writes: {Path(cfg.output) / cfg.name}",
    ])


def check_resumable(cfg: TrainConfig, storage: Storage) -> None:
    """Re-using a run name resumes that run, so its checkpoints must hold the same network and process."""
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
    """Check everything, then train: (Train result, metric name, best checkpoint or None)."""
    storage = storage or Storage.resolve(None, None, cfg.output)
    check_storage_path(storage.path)
    check_resumable(cfg, storage)
    metric = resolved_metric_name(cfg)  # finds (or downloads) the FID weights now, not in the workers
    check_available(cfg.data)
    cfg = resolve_on_driver(cfg)
    ensure_ray(address)
    check_resources(cfg)
    check_storage(storage)
    run_dir = Path(cfg.output) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    try:
        result = build_trainer(cfg, metric, storage_path=storage.path).fit()
    except ray.train.TrainingFailedError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise RunFailed(lines[-1] if lines else type(err).__name__) from None
    best = result.get_best_checkpoint(metric, "min") if result.best_checkpoints else None
    return result, metric, best


CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key Ray's own Train-to-Tune callback uses


class ReportQueue(UserCallback):
    """Rank 0's metrics of every Train report (with its checkpoint's path), put on a Ray queue for the trial's own
    thread to hand to Tune (``fit_reporting``).

    Ray's TuneReportCallback hands them to Tune's main thread instead, which then calls Tune's report itself; when
    a run ends right after its last report, the trial's function has already put its final result on Tune's
    one-slot result queue and the main thread blocks for ever on the full queue (seen in the soak test: trials
    left RUNNING at a rung with their Train runs finished, and the search never ending)."""

    def __init__(self) -> None:
        self.queue = Queue(actor_options={"num_cpus": 0})

    def after_report(self, run_context, metrics: list[dict], checkpoint: ray.train.Checkpoint | None) -> None:
        item = dict(metrics[0])
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(item)


class EndsWithItsTrial(ControllerCallback):
    """Ends a trial's Train controller, instead of letting it reserve workers again, once the trial has gone.

    Ray kills the controller of a trial that Tune stopped, but not at once. A controller that sees its workers
    die in that window retries and reserves a new placement group after Train's own PlacementGroupCleaner has
    cleaned up and exited; nothing removes that group, so it holds a worker's CPUs and GPUs on the cluster for
    ever (found by the suite's clean-cluster check after ASHA stopped trials). The check runs in the controller
    before every worker-group start, when the trial's actor is already marked dead."""

    def __init__(self, trial_actor_id: str, timeout_s: int = 10) -> None:
        self.trial_actor_id, self.timeout_s = trial_actor_id, timeout_s

    def trial_has_gone(self) -> bool:
        from ray.util.state import get_actor

        try:
            state = get_actor(self.trial_actor_id, timeout=self.timeout_s)
        except Exception:  # noqa: BLE001 - state API unreachable: assume the trial lives, as Train's cleaner does
            return False
        return state is not None and state.state == "DEAD"

    def on_controller_start_worker_group(self, *, scaling_config, num_workers):
        if self.trial_has_gone():
            print(f"[spd-tune] trial actor {self.trial_actor_id} has gone: its Train run ends without "
                  "reserving workers again", flush=True)
            ray.actor.exit_actor()
        return None


def trial_callbacks(reports: ReportQueue) -> list:
    """The Train callbacks of a run started by a Tune trial (this process is the trial's actor)."""
    return [reports, EndsWithItsTrial(ray.get_runtime_context().get_actor_id())]


def fit_reporting(trainer: TorchTrainer, reports: ReportQueue, report: Callable[[dict], None],
                  poll_s: float = 0.2) -> ray.train.Result:
    """``trainer.fit()`` in a thread, while this thread passes every report to ``report`` in order; returns once the
    run has ended and every report has been passed. A failed run's error is raised here."""
    out: dict = {}

    def fit() -> None:
        try:
            out["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
            out["error"] = err

    runner = threading.Thread(target=fit, name="train-fit", daemon=True)
    runner.start()
    try:
        while True:
            try:
                report(reports.queue.get(timeout=poll_s))
            except (Empty, queue.Empty):
                if not runner.is_alive() and reports.queue.empty():
                    break
        runner.join()
    finally:
        reports.queue.shutdown()
    if "error" in out:
        raise out["error"]
    return out["result"]


def run_result(path: str) -> ray.train.Result:
    """A finished (or interrupted) Train run read back from its folder, local or in a bucket."""
    return ray.train.Result.from_path(path)


@contextlib.contextmanager
def local_folder(path: str | ray.train.Checkpoint) -> Iterator[Path]:
    """A folder of a run (a checkpoint, its ``ema/`` snapshots) on this machine: itself when local or on a shared
    mount, a temporary download when in a bucket."""
    folder = path if isinstance(path, ray.train.Checkpoint) else ray.train.Checkpoint(path)
    with folder.as_directory() as directory:
        yield Path(directory)


def best_checkpoint(path: str, metric: str) -> ray.train.Checkpoint | None:
    """The run's best registered checkpoint by ``metric`` (lower is better)."""
    return run_result(path).get_best_checkpoint(metric, "min")
