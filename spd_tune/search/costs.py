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

from ..core.flops import PEAK_BF16, count_flops, unet_flops_per_image
from ..core.unet import UNet, UNetConfig
from ..data import dataset
from .space import Space, lowest_steps, steps_range
from .trials import TrialRecord

# Dense bf16 peak of an H100/H200 (data sheet) at an assumed 30% model FLOPs utilisation.
ASSUMED_PEAK, ASSUMED_MFU = PEAK_BF16["H200"], 0.30
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
    with torch.device("meta"):
        net = UNet(unet)
        return (unet_flops_per_image(net, unet.image_size, unet.in_channels, train=False),
                unet_flops_per_image(net, unet.image_size, unet.in_channels, train=True))


@lru_cache(maxsize=1)
def inception_flops() -> float:
    """Forward FLOPs of one image through pytorch-fid's Inception at 299 px (random weights cost the same)."""
    from ..fid.inception import fid_inception_skeleton  # torchvision's Inception: only when a space scores by FID

    with torch.device("meta"):
        net = fid_inception_skeleton().eval()
        return count_flops(lambda: net(torch.zeros(1, 3, 299, 299)))


def search_costs(space: Space) -> tuple[list[StageCost], dict]:
    """The stages' costs for the space's first trial (its T), and the figures they come from."""
    cfg, ph, f = space.train, space.search.posthoc, space.search.final
    forward, train = _unet_flops(cfg.unet)
    inception = 0.0 if dataset(cfg.data.name).metric else inception_flops()  # its own metric needs no network
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
    # the top_k, and the baseline (the space's first trial) when it is not among them: at most one more
    finalists = max(1, f.top_k) + (1 if f.top_k and space.search.enqueue_defaults else 0)
    if ph.enabled:
        samples = ph.samples or cfg.eval.samples
        one = sampling(samples, ph.k_max, f"one post-hoc evaluation ({samples} samples, K at most "
                                          f"{min(ph.k_max or steps, steps)})")
        rows.append(one)
        rows.append(StageCost(f"post-hoc stage ({finalists} finalists x {ph.evaluations} evaluations, at most K)",
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
        n = finalists * points * f.seeds
        rows.append(StageCost(f"final protocol ({finalists} finalists x {points} point{'s' * (points > 1)} x "
                              f"{f.seeds} seed set{'s' * (f.seeds > 1)}, at most)", one.evaluations * n, one.flops * n))
        highest = steps_range(space)[1]
        if f.sampler_steps is None and highest > steps:
            rows.append(StageCost(f"one final score at the highest T the space allows ({highest})",
                                  f.samples * highest, f.samples * (highest * forward + inception)))
    gate = space.search.gate
    if gate.enabled and not space.search.multi_objective.enabled:
        anchors = gate.anchors(space.search.trials)
        full = rows[0].flops + rung.flops * rungs
        rows.append(StageCost(f"the gate's anchors, at most {anchors} (to {space.max_kimg:g} kimg whatever the "
                              "rungs say)",
                              anchors * (rows[0].evaluations + rung.evaluations * rungs), anchors * full))
    rows.append(whole_search(space, rows, rung))
    figures = {"unet_forward_flops": forward, "unet_train_flops": train, "inception_flops": inception,
               "steps": steps, "lowest_steps": lowest_steps(space)}
    return rows, figures


def asha_kimg(space: Space) -> float:
    """Expected kimg one trial trains under ASHA when each rung keeps 1/reduction_factor of the trials reaching it."""
    rungs, eta = space.rungs(), space.search.asha.reduction_factor
    if space.search.multi_objective.enabled:  # FIFO: every trial to the end
        return space.max_kimg
    kimg, previous = 0.0, 0.0
    for i, rung in enumerate(rungs):
        kimg += (rung - previous) / eta ** i
        previous = rung
    return kimg


def whole_search(space: Space, rows: list[StageCost], rung: StageCost) -> StageCost:
    """Every trial's expected training under ASHA and its rung evaluations (``rung``: one), plus the expected
    post-hoc stage and the final protocol (rows as built by search_costs, one trial's training first)."""
    trials, eta = space.search.trials, space.search.asha.reduction_factor
    gate = space.search.gate
    anchors = gate.anchors(trials) if gate.enabled and not space.search.multi_objective.enabled else 0
    stopped = trials - anchors  # trials the rungs may stop; anchors run in full (their row)
    reached = stopped * sum(1 / eta ** i for i in range(len(space.rungs())))  # rung evaluations, expected
    train = rows[0]  # one trial's full training
    share = asha_kimg(space) / space.max_kimg
    stages = [r for r in rows if r.stage.startswith(("post-hoc stage, expected", "final protocol", "the gate's"))]
    flops = stopped * share * train.flops + reached * rung.flops + sum(r.flops for r in stages)
    evaluations = stopped * share * train.evaluations + reached * rung.evaluations + sum(r.evaluations for r in stages)
    label = f"{trials} trials, ASHA keeping 1/{eta:g} at each rung"
    if anchors:
        label += f" once gated, {anchors} anchors in full"
    return StageCost(f"the whole search, expected ({label})", evaluations, flops)


def mean_log_uniform(low: int, high: int) -> float:
    """The mean of K drawn log-uniformly from [low, high]: (high - low) / ln(high / low)."""
    return float(low) if high <= low else (high - low) / math.log(high / low)


def wall_clock_line(space: Space, gpus: int | None) -> str:
    """The whole search's wall clock on ``gpus`` GPUs (default: the space's GPUs per trial times the trials it
    runs at once), from the table's GPU-hours: their share per GPU, but never below one trial's own length."""
    rows, _ = search_costs(space)
    r = space.train.resources
    per_trial = r.workers * r.gpus_per_worker
    default = per_trial * (space.search.max_concurrent or 1)
    n = gpus or default or 1
    trial = (rows[0].gpu_hours + rows[1].gpu_hours) / max(per_trial, 1)  # one trial's training and rungs
    hours = max(rows[-1].gpu_hours / n, trial)
    source = "--gpus" if gpus else ("the space's GPUs per trial x trials at once" if default else
                                    "the space asks for no GPU: one GPU assumed")
    return (f"wall clock on {n:g} GPU(s) ({source}): about {hours:.3g} hours at {ASSUMPTION} "
            f"(the whole search's GPU-hours shared out, never below one trial's {trial:.3g} hours)")


def cost_table(space: Space) -> str:
    rows, figures = search_costs(space)
    width = max(len(r.stage) for r in rows)
    lines = [f"cost at the first trial's T = {figures['steps']} (UNet {figures['unet_forward_flops'] / 1e9:.2f} "
             f"GFLOP forward per image, Inception {figures['inception_flops'] / 1e9:.2f}; GPU-hours at {ASSUMPTION}):",
             f"  {'stage':<{width}}  {'network evaluations':>20}  {'GPU-hours':>10}"]
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.evaluations:>20.3g}  {r.gpu_hours:>10.3g}")
    return "\n".join(lines)


# --- measured: what a finished search spent ------------------------------------------------------------------------

def cost_unit(space: Space) -> tuple[str, float]:
    """("GPU" or "CPU", units per worker): GPUs where the workers have them, else CPUs."""
    r = space.train.resources
    return ("GPU", r.gpus_per_worker) if r.gpus_per_worker > 0 else ("CPU", r.cpus_per_worker)


def trial_costs(space: Space, records: list[TrialRecord], stage_seconds: dict[str, float]) -> dict[str, dict]:
    """trial id -> {hours, train_hours, stage_hours, kimg, full_hours}: workers x units x the wall time of its Train
    run (Tune's time_total_s of the trial, evaluations included), plus one worker's units x the wall time of its
    post-hoc and final evaluations (``stage_seconds``: trial id -> their wall seconds); ``full_hours`` is what it
    would have cost trained to max_kimg (no early stop)."""
    unit, per_worker = cost_unit(space)
    workers = space.train.resources.workers
    out = {}
    for record in records:
        trial_id = record.trial_id
        if not trial_id:
            continue
        train = workers * per_worker * record.seconds / 3600
        stage = per_worker * stage_seconds.get(trial_id, 0.0) / 3600
        kimg = record.kimg
        full = train * space.max_kimg / kimg if kimg > 0 else train
        out[trial_id] = {"hours": train + stage, "train_hours": train, "stage_hours": stage, "kimg": kimg,
                         "full_hours": max(full, train) + stage}
    return out


def cost_summary(space: Space, costs: dict[str, dict]) -> dict:
    """The search's totals and the measured saving from early stopping."""
    unit, _ = cost_unit(space)
    total = sum(c["hours"] for c in costs.values())
    full = sum(c["full_hours"] for c in costs.values())
    return {"unit": unit, "total_hours": total, "train_hours": sum(c["train_hours"] for c in costs.values()),
            "stage_hours": sum(c["stage_hours"] for c in costs.values()), "no_early_stopping_hours": full,
            "ratio_to_no_early_stopping": total / full if full > 0 else math.nan}


def cost_lines(summary: dict) -> list[str]:
    u = summary["unit"]
    return [f"cost: {summary['total_hours']:.4g} {u}-hours in all (trials' training and rung evaluations "
            f"{summary['train_hours']:.4g}, post-hoc and final stages {summary['stage_hours']:.4g}); the same trials "
            f"without early stopping: {summary['no_early_stopping_hours']:.4g} {u}-hours, so ASHA's stops spent "
            f"{100 * summary['ratio_to_no_early_stopping']:.0f}% of that"]


class Budget:
    """search.budget_hours: a new trial starts only while the hours spent plus the projected cost of one more trial
    (the cost per kimg measured so far, times max_kimg) stay within the budget. ``spent`` maps trial id ->
    (wall seconds, kimg) of its latest report; it lives in the searcher's state, so a resumed search keeps it."""

    def __init__(self, space: Space) -> None:
        unit, per_worker = cost_unit(space)
        self.hours = space.search.budget_hours
        self.unit, self.units = unit, space.train.resources.workers * per_worker
        self.max_kimg = space.max_kimg

    def spent_hours(self, spent: dict[str, tuple[float, float]]) -> float:
        return self.units * sum(seconds for seconds, _ in spent.values()) / 3600

    def projected_trial_hours(self, spent: dict[str, tuple[float, float]]) -> float:
        kimg = sum(k for _, k in spent.values())
        return self.spent_hours(spent) / kimg * self.max_kimg if kimg > 0 else 0.0

    def allows_another(self, spent: dict[str, tuple[float, float]]) -> bool:
        return self.hours is None or self.spent_hours(spent) + self.projected_trial_hours(spent) <= self.hours
