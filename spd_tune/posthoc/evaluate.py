"""One post-hoc evaluation: a trained run's weights, averaged with any EMA width, sampled with any sampler.

The point of the post-hoc stage: the EMA width and the sampler (kind, K, eta) need no training, so they are
searched on a finished run's weights. A power-EMA run's width is rebuilt from its snapshots at its last one
(core/ema.py); a rate-EMA run has the one average it trained with. Scores use the run's own evaluation protocol
(metric, references) with the sample count and seeds given here, so they compare with the run's rung scores.

No framework imports: the search runs this as a Ray task; tests run it in-process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checkpoint import load_checkpoint
from ..core.ema import reconstruct
from ..core.samplers import SamplerConfig
from ..core.unet import UNet
from ..errors import CheckpointError
from ..train.averaging import SNAPSHOT_DIR, find_snapshots
from ..train.config import TrainConfig
from ..train.evaluation import Evaluator
from ..train.session import CHECKPOINT_FILE


@dataclass(frozen=True)
class PosthocPoint:
    """What a post-hoc evaluation varies: the EMA width (None: the run's own average) and the sampler."""

    sampler: SamplerConfig
    sigma_rel: float | None = None

    def as_dict(self) -> dict:
        """Plain values, under the names champion.json uses (``sampler``, not SamplerConfig's ``kind``)."""
        return {"sigma_rel": self.sigma_rel, "sampler": self.sampler.kind, "steps": self.sampler.steps,
                "eta": self.sampler.eta}


def last_checkpoint(run_dir: str | Path) -> Path:
    found = sorted(Path(run_dir).glob(f"step_*/{CHECKPOINT_FILE}")) or sorted(
        Path(run_dir).glob(f"checkpoints/step_*/{CHECKPOINT_FILE}"))
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir}")
    return found[-1]


@dataclass(frozen=True)
class RunFiles:
    """What a post-hoc evaluation reads of a run: the checkpoint whose EMA weights a point without a width uses,
    and the folder of the run's power-EMA snapshots."""

    checkpoint: Path
    snapshots: Path

    @classmethod
    def of(cls, run_dir: str | Path, checkpoint: str | Path | None = None) -> RunFiles:
        """A local run folder: its ``ema/`` folder, and ``checkpoint`` (default: its last checkpoint)."""
        return cls(Path(checkpoint) if checkpoint else last_checkpoint(run_dir), Path(run_dir) / SNAPSHOT_DIR)


def averaged_weights(run: RunFiles | str | Path, sigma_rel: float | None) -> tuple[dict[str, torch.Tensor], int]:
    """(weights, step) of the run's average of width ``sigma_rel``, rebuilt at its last snapshot; with None, the
    EMA weights of its checkpoint."""
    run = run if isinstance(run, RunFiles) else RunFiles.of(run)
    if sigma_rel is None:
        state = load_checkpoint(run.checkpoint)
        return state.ema if state.ema is not None else state.model, int(state.extra["step"])
    found = find_snapshots(run.snapshots)
    if not found:
        raise CheckpointError(f"no EMA snapshots in {run.snapshots}: the run did not use ema.kind: power")
    last_step = found[-1][0].step
    snapshots = [s for s, _ in found]
    weights = (load_checkpoint(path, mmap=True).model for _, path in found)
    return reconstruct(snapshots, weights, last_step, sigma_rel), last_step


def evaluate_point(cfg: TrainConfig, run: RunFiles | str | Path, point: PosthocPoint, *, samples: int, seed: int,
                   device: torch.device | str = "cpu") -> dict:
    """Score ``point`` on ``samples`` images with seeds ``seed + i``: {score, nfe, samples, step, point}."""
    device = torch.device(device)
    weights, step = averaged_weights(run, point.sigma_rel)
    model = UNet(cfg.unet)
    model.load_state_dict(weights)
    model = model.to(device).eval()
    protocol = dataclasses.replace(cfg.eval, samples=samples, seed=seed, sampler=point.sampler.kind,
                                   sampler_steps=point.sampler.steps, eta=point.sampler.eta, grid=0)
    evaluator = Evaluator(dataclasses.replace(cfg, eval=protocol), device, rank=0, world_size=1)
    schedule = cfg.process.build(cfg.data.image_size)
    value, scored, _ = evaluator(model, schedule)
    return {"score": value, "metric": evaluator.metric, "nfe": evaluator.nfe(schedule), "samples": scored,
            "step": step, "point": point.as_dict()}


def ema_of(cfg: TrainConfig, sigma_rel: float | None) -> dict:
    """champion.json's "ema": the average a point uses (None: the run's own, the profile its rungs scored)."""
    if cfg.ema.kind == "power":
        return {"kind": "power", "sigma_rel": float(sigma_rel if sigma_rel is not None else cfg.ema.eval_sigma_rel)}
    return {"kind": "rate", "rate": cfg.ema.rate}


def sampling_of(point: PosthocPoint, steps: int) -> dict:
    """champion.json's "sampling": the sampler, its K as the number of steps it really takes, and eta."""
    return {"sampler": point.sampler.kind, "steps": int(steps), "eta": float(point.sampler.eta)}
