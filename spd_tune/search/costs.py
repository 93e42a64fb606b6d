"""What each stage of a search costs, in network evaluations and in GPU-hours, computed from the model's FLOPs.

FLOPs are counted by torch's FlopCounterMode on meta tensors (no memory, no weights), for the UNet of the
space's first trial and for the Inception network that scores samples. GPU-hours divide them by one labelled
assumption, ``ASSUMED_FLOPS``, until a measurement on a GPU (bench/) replaces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..core.unet import UNet, UNetConfig
from .space import Space, lowest_steps

# Dense bf16 peak of an H100/H200 (data sheet) at an assumed 30% model FLOPs utilisation.
ASSUMED_PEAK, ASSUMED_MFU = 989e12, 0.30
ASSUMED_FLOPS = ASSUMED_PEAK * ASSUMED_MFU
ASSUMPTION = "989 TFLOP/s dense bf16 at 30% MFU (assumed, not measured)"


@dataclass(frozen=True)
class StageCost:
    stage: str
    evaluations: float  # network forward passes (a training image counts as its forward + backward FLOPs)
    flops: float  # UNet and Inception together

    @property
    def gpu_hours(self) -> float:
        return self.flops / ASSUMED_FLOPS / 3600


@lru_cache(maxsize=8)
def _unet_flops(unet: UNetConfig) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = UNet(unet)
        x, t = torch.zeros(1, unet.in_channels, unet.image_size, unet.image_size), torch.zeros(1)
        with FlopCounterMode(display=False) as forward:
            out = net(x, t)
        with FlopCounterMode(display=False) as both:
            net(x, t).float().square().mean().backward()
    del out
    return float(forward.get_total_flops()), float(both.get_total_flops())


@lru_cache(maxsize=1)
def inception_flops() -> float:
    """Forward FLOPs of one image through pytorch-fid's Inception at 299 px (random weights cost the same)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..fid.inception import fid_inception_skeleton

    with torch.device("meta"):
        net = fid_inception_skeleton().eval()
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, 299, 299))
    return float(counter.get_total_flops())


def search_costs(space: Space) -> tuple[list[StageCost], dict]:
    """The stages' costs for the space's first trial (its T), and the figures they come from."""
    cfg, ph, f = space.train, space.search.posthoc, space.search.final
    forward, train = _unet_flops(cfg.unet)
    inception = inception_flops()
    steps = cfg.process.steps

    def sampling(samples: int, k: int | None, label: str) -> StageCost:
        k = min(k or steps, steps)
        return StageCost(label, samples * k, samples * (k * forward + inception))

    images = space.max_kimg * 1000
    rows = [StageCost(f"one trial's training ({space.max_kimg:g} kimg)", images * train / forward, images * train)]
    rung = sampling(cfg.eval.samples, cfg.eval.sampler_steps, "")
    rungs = len(space.rungs())
    k_rung = rung.evaluations / cfg.eval.samples
    rows.append(StageCost(f"its {rungs} rung evaluations ({cfg.eval.samples} samples, K {k_rung:g})",
                          rung.evaluations * rungs, rung.flops * rungs))
    finalists = max(1, f.top_k)
    if ph.enabled:
        samples = ph.samples or cfg.eval.samples
        one = sampling(samples, ph.k_max, f"one post-hoc evaluation ({samples} samples, K at most "
                                          f"{min(ph.k_max or steps, steps)})")
        rows.append(one)
        rows.append(StageCost(f"post-hoc stage ({finalists} finalists x {ph.evaluations} evaluations, at most)",
                              one.evaluations * finalists * ph.evaluations, one.flops * finalists * ph.evaluations))
        k_mean = mean_log_uniform(min(ph.k_min, steps), min(ph.k_max or steps, steps))
        typical = StageCost("", samples * k_mean, samples * (k_mean * forward + inception))
        rows.append(StageCost(f"post-hoc stage, expected (K log-uniform: mean {k_mean:.0f})",
                              typical.evaluations * finalists * ph.evaluations,
                              typical.flops * finalists * ph.evaluations))
    if f.top_k:
        points = 2 if ph.enabled else 1
        one = sampling(f.samples, f.sampler_steps, f"one final score ({f.samples} samples, K "
                                                   f"{min(f.sampler_steps or steps, steps)})")
        rows.append(one)
        rows.append(StageCost(f"final protocol ({finalists} finalists x {points} point{'s' * (points > 1)})",
                              one.evaluations * finalists * points, one.flops * finalists * points))
        highest = _highest_steps(space)
        if f.sampler_steps is None and highest > steps:
            rows.append(StageCost(f"one final score at the highest T the space allows ({highest})",
                                  f.samples * highest, f.samples * (highest * forward + inception)))
    figures = {"unet_forward_flops": forward, "unet_train_flops": train, "inception_flops": inception,
               "steps": steps, "lowest_steps": lowest_steps(space)}
    return rows, figures


def mean_log_uniform(low: int, high: int) -> float:
    """The mean of K drawn log-uniformly from [low, high]: (high - low) / ln(high / low)."""
    return float(low) if high <= low else (high - low) / math.log(high / low)


def _highest_steps(space: Space) -> int:
    for spec in space.search.params.values():
        if spec.path == "process.steps":
            return int(max(spec.choices) if spec.type == "categorical" else spec.high)
    return space.train.process.steps


def cost_table(space: Space) -> str:
    rows, figures = search_costs(space)
    width = max(len(r.stage) for r in rows)
    lines = [f"cost at the first trial's T = {figures['steps']} (UNet {figures['unet_forward_flops'] / 1e9:.2f} "
             f"GFLOP forward per image, Inception {figures['inception_flops'] / 1e9:.2f}; GPU-hours at {ASSUMPTION}):",
             f"  {'stage':<{width}}  {'network evaluations':>20}  {'GPU-hours':>10}"]
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.evaluations:>20.3g}  {r.gpu_hours:>10.3g}")
    return "\n".join(lines)
