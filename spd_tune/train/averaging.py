"""The averaged weights a run evaluates and exports: the classic EMA (``ema.kind: rate``) or EDM2's
power-function profiles (``ema.kind: power``), whose snapshots the post-hoc stage rebuilds other widths from.

Snapshots are weights-only checkpoints (core/checkpoint.py) in the run's ``ema/`` folder, next to Ray Train's
checkpoints but outside their retention (``keep_checkpoints`` never deletes them), one file per profile and step:
``ema/step_000001000-sigma_0.1000.pt``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from ..core.checkpoint import Checkpoint
from ..core.ema import PowerEMA, Snapshot
from ..core.unet import UNet
from .config import TrainConfig

SNAPSHOT_DIR = "ema"
_SNAPSHOT_NAME = re.compile(r"step_(\d{9})-sigma_(\d+\.\d+)\.pt")


def snapshot_name(step: int, sigma_rel: float) -> str:
    return f"step_{step:09d}-sigma_{sigma_rel:.4f}.pt"


def find_snapshots(folder: str | Path) -> list[tuple[Snapshot, Path]]:
    """The snapshots in a run's ``ema/`` folder, oldest first."""
    found = []
    for path in Path(folder).glob("step_*-sigma_*.pt"):
        match = _SNAPSHOT_NAME.fullmatch(path.name)
        if match:
            found.append((Snapshot(int(match[1]), float(match[2])), path))
    return sorted(found, key=lambda item: (item[0].step, item[0].sigma_rel))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - rate)


def ema_rate(cfg: TrainConfig, step: int) -> float:
    return min(cfg.ema.rate, (1 + step) / (10 + step)) if cfg.ema.warmup else cfg.ema.rate


def snapshot_plan(cfg: TrainConfig) -> str | None:
    """One line for --dry-run: the profiles, and the snapshots' count and size for a full-length run."""
    if cfg.ema.kind != "power":
        return None
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        state = UNet(cfg.unet).state_dict()
    per_file = sum(v.numel() * v.element_size() for v in state.values())
    files = len(cfg.snapshot_steps()) * len(cfg.ema.sigma_rels)
    every = f"every {cfg.ema.snapshot_kimg:g} kimg" if cfg.ema.snapshot_kimg else "at every evaluation"
    return (f"ema: power, profiles sigma_rel {list(cfg.ema.sigma_rels)} (evaluations use {cfg.ema.eval_sigma_rel:g}); "
            f"snapshots {every}: {files} files x {per_file / 2**20:.1f} MiB = {files * per_file / 2**30:.2f} GiB "
            f"per full-length run")


class Averages:
    """Keeps the run's averaged weights; ``evaluated()`` is the module that rungs score and checkpoints hold."""

    def __init__(self, cfg: TrainConfig, net: torch.nn.Module) -> None:
        self.cfg = cfg
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.power = PowerEMA(net, cfg.ema.sigma_rels) if cfg.ema.kind == "power" else None
        self.snapshot_steps = frozenset(cfg.snapshot_steps())

    def update(self, net: torch.nn.Module, step: int) -> None:
        """After optimiser step ``step`` (0-based)."""
        if self.power is None:
            ema_update(self.module, net, ema_rate(self.cfg, step))
        else:
            self.power.update(net, step + 1)

    def evaluated(self) -> torch.nn.Module:
        if self.power is not None:
            self.module.load_state_dict(self.power.averages[self.power.sigma_rels.index(self.cfg.ema.eval_sigma_rel)])
        return self.module

    def state(self) -> dict:
        """What a resumed run needs beyond the evaluated weights (a checkpoint's ``extra``)."""
        return {"power_ema": self.power.state_dict()} if self.power is not None else {}

    def load(self, ckpt: Checkpoint) -> None:
        self.module.load_state_dict(ckpt.ema)
        if self.power is not None:
            if "power_ema" not in ckpt.extra:
                raise ValueError("the checkpoint holds no power-EMA state: it was trained with ema.kind: rate")
            self.power.load_state_dict(ckpt.extra["power_ema"])

    def snapshots(self, step: int) -> list[tuple[str, Checkpoint]]:
        """(file name, weights-only checkpoint) of every profile, when ``step`` (steps done) is a snapshot step."""
        if self.power is None or step not in self.snapshot_steps:
            return []
        net = self.module
        return [(snapshot_name(step, s), Checkpoint(
                    unet=net.config, process=self.cfg.process, model=average,
                    extra={"ema": {"kind": "power", "sigma_rel": s}, "step": step,
                           "kimg": self.cfg.kimg_at(step)}))
                for s, average in zip(self.power.sigma_rels, self.power.averages)]
