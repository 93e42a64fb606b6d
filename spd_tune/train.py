"""One SPD training run: the per-worker loop that Ray Train runs on every worker, and its CLI.

    python -m spd_tune.train demo --workers 2
    python -m spd_tune.train cifar10 --set optim.lr=2e-4 --set total_kimg=20000 --gpus-per-worker 1 --workers 8

Progress is counted in kimg (thousands of training images), so a run means the same on 1 or 64 workers:
the global batch is per-worker batch x workers x accumulation, and every random draw (data order, flips,
t, noise, dropout) derives from (seed, step, rank). A resumed run therefore continues exactly where the
checkpoint left it, without saving any worker's RNG state.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from .checkpoint import Checkpoint, WriteFault, load_checkpoint
from .config import TrainConfig, from_dict
from .data import ShardedBatches, load_images
from .flops import peak_bf16_flops, train_flops_per_image
from .session import CHECKPOINT_FILE, Session
from .unet import UNet


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def evaluation_steps(cfg: TrainConfig) -> list[int]:
    """The steps after which the run evaluates, checkpoints and reports: every M kimg, the extra points
    (ASHA rungs) and the end. A point between two steps goes to the first step that reaches it."""
    total = total_steps(cfg)
    points = {cfg.total_kimg, *cfg.eval.at_kimg}
    k = cfg.eval.every_kimg
    while k < cfg.total_kimg - 1e-9:
        points.add(k)
        k += cfg.eval.every_kimg
    return sorted({min(total, math.ceil(p * 1000 / cfg.batch - 1e-9)) for p in points if p <= cfg.total_kimg})


def total_steps(cfg: TrainConfig) -> int:
    return math.ceil(cfg.total_kimg * 1000 / cfg.batch - 1e-9)


def kimg_at(step: int, cfg: TrainConfig) -> float:
    return step * cfg.batch / 1000


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - rate)


def run_worker(cfg: TrainConfig, session: Session) -> None:
    """The training loop of one worker."""
    rank, world, device = session.rank, session.world_size, session.device
    gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)
    channels_last = gpu if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    net = UNet(cfg.unet).to(device, memory_format=memory_format)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay, fused=gpu or None)
    start_step, last_metrics = 0, None
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = load_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device)
            net.load_state_dict(state.model)
            ema.load_state_dict(state.ema)
            opt.load_state_dict(state.extra["optimizer"])
            start_step = int(state.extra["step"])
            last_metrics = {"kimg": kimg_at(start_step, cfg), "step": start_step, "start_step": start_step,
                            **state.extra.get("metric", {})}
            session.log(f"resumed from step {start_step} ({kimg_at(start_step, cfg):.3f} kimg)")
    model = session.prepare_model(net)
    if cfg.compile:
        model = torch.compile(model)
    schedule = cfg.process.build(cfg.data.image_size)
    batches = ShardedBatches(load_images(cfg.data), cfg.batch // cfg.accumulation, rank=rank, world_size=world,
                             seed=cfg.seed)
    from .evaluation import Evaluator

    evaluator = Evaluator(cfg, device, rank, world)
    eval_steps = [s for s in evaluation_steps(cfg) if s > start_step]
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
    for step in range(start_step, total_steps(cfg)):
        lr = cfg.optim.lr * (min(1.0, kimg_at(step, cfg) / cfg.optim.warmup_kimg) if cfg.optim.warmup_kimg else 1.0)
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
            if cfg.faults.nan_loss_at_kimg is not None and kimg_at(step, cfg) >= cfg.faults.nan_loss_at_kimg:
                loss = loss * float("nan")  # injected divergence
            (loss / cfg.accumulation).backward()
            loss_sum += loss.detach()
            loss_count += 1
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rate = min(cfg.ema.rate, (1 + step) / (10 + step)) if cfg.ema.warmup else cfg.ema.rate
        ema_update(ema, net, rate)
        images_seen += cfg.batch
        now = time.perf_counter()
        done = step + 1
        if rank == 0 and now - last_log >= cfg.log_every_s:
            session.log(_status(cfg, done, loss_sum / max(loss_count, 1), images_seen / (now - timer), flops, peak,
                                world))
            last_log = now
        if eval_steps and done == eval_steps[0]:
            eval_steps.pop(0)
            elapsed = now - timer
            loss_value = session.mean_across_workers(loss_sum / max(loss_count, 1))
            if not math.isfinite(loss_value):
                # a diverged run ends here with a final report, no checkpoint and no retry: restarting it from
                # its last checkpoint would only diverge again. The search marks it failed.
                session.log(f"training diverged: loss is {loss_value} at {kimg_at(done, cfg):.3f} kimg; stopping")
                session.report({"kimg": kimg_at(done, cfg), "step": done, "start_step": start_step, "lr": lr,
                                "diverged": 1.0, evaluator.metric: math.inf}, None, None, name=f"step_{done:09d}")
                return
            session.log(f"evaluating at {kimg_at(done, cfg):.3f} kimg: {cfg.eval.samples} samples, "
                        f"{cfg.eval.sampler} sampler, {cfg.eval.sampler_steps or cfg.process.steps} steps")
            eval_start = time.perf_counter()
            value, scored, grid = evaluator(ema, schedule)
            metrics = {"kimg": kimg_at(done, cfg), "step": done, "start_step": start_step, "loss": loss_value, "lr": lr,
                       "img_per_s": images_seen / max(elapsed, 1e-9), "eval_s": time.perf_counter() - eval_start,
                       "eval_samples": scored, "nfe": evaluator.nfe(schedule), evaluator.metric: value}
            state = None
            if rank == 0:
                state = Checkpoint(unet=net.config, process=cfg.process, model=net.state_dict(),
                                   ema=ema.state_dict(), extra={"optimizer": opt.state_dict(), "step": done,
                                                                "kimg": kimg_at(done, cfg), "config": cfg.to_dict(),
                                                                "metric": {evaluator.metric: value}})
                session.log(f"{evaluator.metric} {value:.4f} at {kimg_at(done, cfg):.3f} kimg")
            at = cfg.faults.checkpoint_write_error_at_kimg
            fault = WriteFault.named(cfg.faults.checkpoint_write_error) if at and kimg_at(done, cfg) >= at else None
            try:
                session.report(metrics, state, grid, name=f"step_{done:09d}", fault=fault)
            except OSError as err:
                raise OSError(err.errno, f"cannot write the checkpoint of step {done} ({err.strerror}); the "
                                         f"checkpoints written before it are untouched", err.filename) from None
            loss_sum.zero_()
            loss_count, images_seen, timer = 0, 0, time.perf_counter()


def _status(cfg: TrainConfig, step: int, loss: torch.Tensor, img_per_s: float, flops: float, peak: float | None,
            world: int) -> str:
    line = (f"kimg {kimg_at(step, cfg):9.3f}/{cfg.total_kimg:g}  loss {loss.item():.4f}  "
            f"{img_per_s:8.1f} img/s")
    if peak:
        line += f"  MFU {flops * img_per_s / (peak * world):.1%}"
    return line


def train_loop_per_worker(config: dict) -> None:
    """Entry point of each Ray Train worker."""
    from .session import RaySession

    run_worker(from_dict(TrainConfig, config), RaySession())


def main(argv: list[str] | None = None) -> int:
    from .launch import train_cli

    return train_cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
