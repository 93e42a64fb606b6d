"""Where a training worker runs: under Ray Train (``RaySession``) or in-process (``LocalSession``).

The loop (train/loop.py) talks only to this interface (rank, device, the latest checkpoint, collectives,
reporting), so the same loop is unit-tested in-process and runs distributed under Ray Train.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..core.checkpoint import Checkpoint, WriteFault, save_checkpoint
from .averaging import SNAPSHOT_DIR

CHECKPOINT_FILE = "checkpoint.pt"
GRID_FILE = "samples.png"
GRID_MIN_WIDTH = 512  # px


def write_checkpoint_dir(directory: Path, state: Checkpoint, grid: np.ndarray | None,
                         fault: WriteFault | None = None) -> None:
    """checkpoint.pt (full training state) and samples.png (the evaluation's first images)."""
    save_checkpoint(Path(directory) / CHECKPOINT_FILE, state, fault=fault)
    if grid is not None and len(grid):
        save_grid(grid, Path(directory) / GRID_FILE)


def save_grid(grid: np.ndarray, path: Path) -> Path:
    """uint8 images [N, H, W, 3] as one square PNG grid."""
    from torchvision.utils import save_image

    images = torch.from_numpy(np.ascontiguousarray(grid)).permute(0, 3, 1, 2).float() / 255
    nrow = int(math.ceil(math.sqrt(len(images))))
    # nearest-neighbour upscaling to at least GRID_MIN_WIDTH px: a grid of 16 px images is visible
    scale = max(1, math.ceil(GRID_MIN_WIDTH / (nrow * images.shape[-1])))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, path, nrow=nrow, padding=2 * scale)
    return path


class Session:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError

    def prepare_model(self, net: torch.nn.Module) -> torch.nn.Module:
        return net

    def mean_across_workers(self, value: torch.Tensor) -> float:
        return float(value)

    def report(self, metrics: dict, state: Checkpoint | None, grid: np.ndarray | None, name: str,
               fault: WriteFault | None = None) -> None:
        """Metrics (every rank) and, from rank 0, a checkpoint; ``fault`` injects a failing write."""
        raise NotImplementedError

    def save_snapshot(self, name: str, state: Checkpoint) -> None:
        """An EMA snapshot (train/averaging.py) into the run's ema/ folder, outside checkpoint retention."""
        raise NotImplementedError

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[spd-tune] {message}", flush=True)


class LocalSession(Session):
    """One in-process worker writing checkpoints to run_dir/checkpoints/<name>/ and metrics to metrics.jsonl."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu", quiet: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.device = torch.device(device)
        self.quiet = quiet
        self.history: list[dict] = []

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = sorted(d for d in (self.run_dir / "checkpoints").glob("step_*") if (d / CHECKPOINT_FILE).is_file())
        yield found[-1] if found else None

    def report(self, metrics, state, grid, name, fault=None):
        if state is not None:
            directory = self.run_dir / "checkpoints" / name
            directory.mkdir(parents=True, exist_ok=True)
            write_checkpoint_dir(directory, state, grid, fault)
        self.history.append(dict(metrics))
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def save_snapshot(self, name, state):
        save_checkpoint(self.run_dir / SNAPSHOT_DIR / name, state)

    def log(self, message: str) -> None:
        if not self.quiet:
            super().log(message)


class RaySession(Session):
    """A Ray Train worker: DDP through Ray's helpers, checkpoints registered with ray.train.report."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # set on a restart, a same-name re-run or a Tune retry
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def prepare_model(self, net):
        import ray.train.torch

        return ray.train.torch.prepare_model(net, move_to_device=False)

    def mean_across_workers(self, value: torch.Tensor) -> float:
        import torch.distributed as dist

        value = value.detach().float().clone()
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)

    def report(self, metrics, state, grid, name, fault=None):
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if state is not None:  # rank 0 only; every rank still calls report (it is a barrier)
                write_checkpoint_dir(Path(tmp), state, grid, fault)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    def save_snapshot(self, name, state):
        import pyarrow.fs
        import ray.train

        storage = ray.train.get_context().get_storage()  # the run's own folder, local or in a bucket
        with tempfile.TemporaryDirectory() as tmp:
            local = save_checkpoint(Path(tmp) / name, state)
            folder = f"{storage.experiment_fs_path}/{SNAPSHOT_DIR}"
            storage.storage_filesystem.create_dir(folder, recursive=True)
            pyarrow.fs.copy_files(str(local), f"{folder}/{name}", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=storage.storage_filesystem)
