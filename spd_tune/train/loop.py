"""The training loop of one worker: the function Ray Train runs on every worker (and tests run in-process).

Progress is counted in kimg (thousands of training images), so a run means the same on 1 or 64 workers:
the global batch is per-worker batch x workers x accumulation, and every random draw (data order, flips,
t, noise, dropout) derives from (seed, step, rank). A resumed run therefore continues exactly where the
checkpoint left it, without saving any worker's RNG state.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checkpoint import Checkpoint, WriteFault, load_checkpoint
from ..core.flops import peak_bf16_flops, train_flops_per_image
from ..core.unet import UNet
from ..data import ShardedBatches, load_images
from ..typed import from_dict
from .averaging import Averages
from .config import TrainConfig
from .evaluation import Evaluator
from .session import CHECKPOINT_FILE, RaySession, Session


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Faults:
    """The injected faults of reliability tests (``faults.*``, off in real runs), asked at the points they hit."""

    cfg: TrainConfig

    def poison(self, loss: torch.Tensor, kimg: float) -> torch.Tensor:
        at = self.cfg.faults.nan_loss_at_kimg
        return loss * float("nan") if at is not None and kimg >= at else loss  # a diverging run

    def checkpoint_write(self, kimg: float) -> WriteFault | None:
        at = self.cfg.faults.checkpoint_write_error_at_kimg
        return WriteFault.named(self.cfg.faults.checkpoint_write_error) if at and kimg >= at else None


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The base rate after a linear warm-up over ``optim.warmup_kimg``."""
    warmup = cfg.optim.warmup_kimg
    return cfg.optim.lr * (min(1.0, cfg.kimg_at(step) / warmup) if warmup else 1.0)


def restore(session: Session, net, averages: Averages, opt, cfg: TrainConfig, device) -> tuple[int, dict | None]:
    """Load the latest registered checkpoint, if any: (the step to start from, the metrics it was saved with)."""
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is None:
            return 0, None
        state = load_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device)
        net.load_state_dict(state.model)
        averages.load(state)
        opt.load_state_dict(state.extra["optimizer"])
    step = int(state.extra["step"])
    session.log(f"resumed from step {step} ({cfg.kimg_at(step):.3f} kimg)")
    return step, {"kimg": cfg.kimg_at(step), "step": step, "start_step": step, **state.extra.get("metric", {})}


def training_state(cfg: TrainConfig, net, averages: Averages, opt, step: int, metric: dict) -> Checkpoint:
    """The full state a run resumes from exactly: weights, averages, optimiser, progress and the run's config."""
    return Checkpoint(unet=net.config, process=cfg.process, model=net.state_dict(),
                      ema=averages.evaluated().state_dict(),
                      extra={"optimizer": opt.state_dict(), "step": step, "kimg": cfg.kimg_at(step),
                             "config": cfg.to_dict(), "metric": metric, **averages.state()})


def report_divergence(session: Session, cfg: TrainConfig, metric: str, loss: float, step: int, start: int,
                      lr: float) -> None:
    """A diverged run ends with a final report, no checkpoint and no retry: restarting it from its last
    checkpoint would only diverge again. The search marks it failed."""
    session.log(f"training diverged: loss is {loss} at {cfg.kimg_at(step):.3f} kimg; stopping")
    session.report({"kimg": cfg.kimg_at(step), "step": step, "start_step": start, "lr": lr, "diverged": 1.0,
                    metric: math.inf}, None, None, name=f"step_{step:09d}")


def run_worker(cfg: TrainConfig, session: Session) -> None:
    """The training loop of one worker."""
    rank, world, device = session.rank, session.world_size, session.device
    gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)
    channels_last = gpu if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    faults = Faults(cfg)

    # --- network, EMA, optimiser; resume from the latest checkpoint
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    net = UNet(cfg.unet).to(device, memory_format=memory_format)
    averages = Averages(cfg, net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay, fused=gpu or None)
    start_step, last_metrics = restore(session, net, averages, opt, cfg, device)
    model = session.prepare_model(net)
    if cfg.compile:
        model = torch.compile(model)

    # --- process, data, evaluation
    schedule = cfg.process.build(cfg.data.image_size)
    batches = ShardedBatches(load_images(cfg.data), cfg.batch // cfg.accumulation, rank=rank, world_size=world,
                             seed=cfg.seed)
    evaluator = Evaluator(cfg, device, rank, world)
    eval_steps = [s for s in cfg.evaluation_steps() if s > start_step]
    if not eval_steps and last_metrics is not None:
        # resumed from the final checkpoint (e.g. a search driver restarted after the run had ended):
        # nothing to train, but the caller still gets the run's final metrics
        session.report(last_metrics, None, None, name=f"step_{start_step:09d}")
        return
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    flops = train_flops_per_image(net, cfg.data.image_size) if rank == 0 else 0.0
    peak = peak_bf16_flops(device) if bf16 else None

    loss_sum = torch.zeros((), device=device)
    loss_count, images_seen, timer, last_log = 0, 0, time.perf_counter(), time.perf_counter()
    for step in range(start_step, cfg.total_steps()):
        # --- one optimiser step over `accumulation` micro-batches
        lr = learning_rate(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        for micro in range(cfg.accumulation):
            x0 = batches.batch(step * cfg.accumulation + micro).to(device, non_blocking=True)
            x0 = x0.contiguous(memory_format=memory_format)
            gen = torch.Generator(device).manual_seed(derived_seed(cfg.seed, step, micro, rank))
            t = torch.randint(0, schedule.steps, (len(x0),), generator=gen, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            torch.manual_seed(derived_seed(cfg.seed, step, micro, rank, 1))  # dropout
            sync = micro == cfg.accumulation - 1 or not hasattr(model, "no_sync")
            with (nullcontext() if sync else model.no_sync()), autocast():
                loss = schedule.loss(model, x0, t, noise)
            loss = faults.poison(loss, cfg.kimg_at(step))
            (loss / cfg.accumulation).backward()
            loss_sum += loss.detach()
            loss_count += 1
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        averages.update(net, step)
        images_seen += cfg.batch
        if rank == 0:
            for name, snapshot in averages.snapshots(step + 1):
                session.save_snapshot(name, snapshot)

        # --- status line
        now = time.perf_counter()
        done = step + 1
        if rank == 0 and now - last_log >= cfg.log_every_s:
            session.log(_status(cfg, done, loss_sum / max(loss_count, 1), images_seen / (now - timer), flops, peak,
                                world))
            last_log = now
        if not eval_steps or done != eval_steps[0]:
            continue

        # --- evaluation, checkpoint and report (every rank reports: it is a barrier)
        eval_steps.pop(0)
        elapsed = now - timer
        loss_value = session.mean_across_workers(loss_sum / max(loss_count, 1))
        if not math.isfinite(loss_value):
            report_divergence(session, cfg, evaluator.metric, loss_value, done, start_step, lr)
            return
        session.log(f"evaluating at {cfg.kimg_at(done):.3f} kimg: {cfg.eval.samples} samples, "
                    f"{cfg.eval.sampler} sampler, {cfg.eval.sampler_steps or cfg.process.steps} steps")
        eval_start = time.perf_counter()
        value, scored, grid = evaluator(averages.evaluated(), schedule)
        metrics = {"kimg": cfg.kimg_at(done), "step": done, "start_step": start_step, "loss": loss_value, "lr": lr,
                   "img_per_s": images_seen / max(elapsed, 1e-9), "eval_s": time.perf_counter() - eval_start,
                   "eval_samples": scored, "nfe": evaluator.nfe(schedule), evaluator.metric: value}
        state = None
        if rank == 0:
            state = training_state(cfg, net, averages, opt, done, {evaluator.metric: value})
            session.log(f"{evaluator.metric} {value:.4f} at {cfg.kimg_at(done):.3f} kimg")
        try:
            session.report(metrics, state, grid, name=f"step_{done:09d}", fault=faults.checkpoint_write(
                cfg.kimg_at(done)))
        except OSError as err:
            raise OSError(err.errno, f"cannot write the checkpoint of step {done} ({err.strerror}); the "
                                     f"checkpoints written before it are untouched", err.filename) from None
        loss_sum.zero_()
        loss_count, images_seen, timer = 0, 0, time.perf_counter()


def _status(cfg: TrainConfig, step: int, loss: torch.Tensor, img_per_s: float, flops: float, peak: float | None,
            world: int) -> str:
    line = (f"kimg {cfg.kimg_at(step):9.3f}/{cfg.total_kimg:g}  loss {loss.item():.4f}  "
            f"{img_per_s:8.1f} img/s")
    if peak:
        line += f"  MFU {flops * img_per_s / (peak * world):.1%}"
    return line


def train_loop_per_worker(config: dict) -> None:
    """Entry point of each Ray Train worker."""
    run_worker(from_dict(TrainConfig, config), RaySession())
