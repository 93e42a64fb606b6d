"""The in-training evaluation: every worker samples its share, statistics are merged, rank 0 scores.

Sample i of an evaluation always uses seed ``eval.seed + i``, and rank r of W generates i = r, r + W, ...,
so the score does not depend on the worker count. Collectives go through torch.distributed when a
process group is up (Ray Train sets it up), so this module knows nothing about Ray.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist

from ..core.samplers import sample
from ..core.schedule import DiffusionSchedule
from ..data import dataset, load_images, to_uint8
from ..data.gaussian_fields import true_log_power
from ..fid import InceptionFeatures, RunningStats, metric_name, reference_stats, resolve_fid_weights, score
from ..fid.spectral import METRIC as GAUSS_FD
from ..fid.spectral import SpectralStats, gauss_fd
from ..fid.stats import merge_all
from .config import TrainConfig, expected_metric_name

SAMPLE_BATCH = 256


def resolved_metric_name(cfg: TrainConfig) -> str:
    """The metric's name after finding and checking the FID weights (downloading them if allowed): absent or
    wrong weights fail here, on the driver, before any worker starts."""
    f = cfg.eval.features
    if f.weights == "random" or dataset(cfg.data.name).metric:
        return expected_metric_name(cfg)
    return metric_name(f.dims, resolve_fid_weights(f.weights_path).is_fid)


def _gather(obj, world_size: int) -> list:
    if world_size == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


class Evaluator:
    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int, world_size: int):
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world_size
        self.sampler = cfg.eval.sampler_config()
        self.reference: RunningStats | None = None
        self.true_log_power = None
        if dataset(cfg.data.name).metric == GAUSS_FD:  # the true Gaussian is known: no network, no reference set
            d = cfg.data
            self.features, self.metric = None, GAUSS_FD
            self.true_log_power = true_log_power(d.image_size, d.field_m, d.field_c2, d.field_std)
            return
        self.features = InceptionFeatures(cfg.eval.features, device=device)
        self.metric = self.features.metric_name
        if rank == 0:  # cached on disk by content hash: computed once per (data, count, weights)
            ref_data = dataclasses.replace(cfg.data, split=cfg.eval.ref_split, limit=cfg.eval.ref_count,
                                           seed=cfg.eval.ref_seed)
            self.reference, _ = reference_stats(load_images(ref_data), self.features, cfg.eval.stats_cache_dir)

    def nfe(self, schedule: DiffusionSchedule) -> int:
        """Network evaluations per sample under the evaluation protocol (its K, or T when K is unset or > T)."""
        return schedule.respace(min(self.sampler.steps or schedule.steps, schedule.steps)).steps

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, schedule: DiffusionSchedule) -> tuple[float, int, np.ndarray]:
        """(score, number of samples scored, uint8 grid images) on rank 0; (nan, 0, empty) elsewhere."""
        cfg = self.cfg.eval
        unet = self.cfg.unet
        shape = (unet.in_channels, unet.image_size, unet.image_size)
        seeds = list(range(cfg.seed + self.rank, cfg.seed + cfg.samples, self.world))
        stats = SpectralStats() if self.features is None else RunningStats(self.features.spec.dims)
        finite, grid = True, []
        for start in range(0, len(seeds), SAMPLE_BATCH):
            batch = seeds[start: start + SAMPLE_BATCH]
            images = sample(model, schedule, batch, shape, config=self.sampler, device=self.device)
            if not bool(torch.isfinite(images).all()):
                finite = False  # a diverged model: score inf, and never feed NaN to the linear algebra
                break
            u8 = to_uint8(images)
            if self.features is None:
                stats.add(u8)
            else:
                self.features.stats(u8, into=stats)
            grid += [(s, im) for s, im in zip(batch, u8.cpu().numpy()) if s < cfg.seed + cfg.grid]
        parts = _gather((stats.state(), finite, grid), self.world)
        if self.rank != 0:
            return math.nan, 0, np.zeros((0,) + shape[1:] + (shape[0],), np.uint8)
        grid_images = [im for _, im in sorted((g for _, _, part in parts for g in part), key=lambda g: g[0])]
        grid_array = np.stack(grid_images) if grid_images else np.zeros((0,) + shape[1:] + (shape[0],), np.uint8)
        if not all(ok for _, ok, _ in parts):
            return math.inf, 0, grid_array
        if self.features is None:
            merged = SpectralStats.merge([SpectralStats.from_state(state) for state, _, _ in parts])
            return gauss_fd(merged, self.true_log_power), merged.n, grid_array
        merged = merge_all([RunningStats.from_state(state) for state, _, _ in parts])
        return score(merged, self.reference), merged.n, grid_array
