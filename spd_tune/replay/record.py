"""Recording learning curves: a grid of a space's configurations, each trained to the space's ``max_kimg`` with
several training seeds by the project's own training loop (train/loop.py, in-process), and scored at every
evaluation point by the rung protocol and, in the same pass, by every candidate protocol (protocols below) and
at the end by the final protocol over its seed sets.

Every (configuration, seed) run is trained in its own folder under ``<out>.work/`` and written into the table as
soon as it is scored, so an interrupted recording resumes: finished runs are kept, a run in progress continues
from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint
from ..core.unet import UNet
from ..errors import ConfigError
from ..search.space import Space
from ..train.config import TrainConfig
from ..train.evaluation import Evaluator
from ..train.loop import run_worker
from ..train.session import CHECKPOINT_FILE, LocalSession
from .table import Table, config_key, load_table, machine, new_table, save_table

RECORD_EVERY_KIMG = 2.0  # besides the rungs, a point at least this often
GRID_POINTS = 12  # per searched parameter, by default


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A way to score one evaluation point: which weights, how many samples, which sampler."""

    name: str
    description: str
    weights: str = "ema"  # "ema": the run's evaluated average; "raw": the trained weights themselves
    samples_factor: int = 1
    all_steps: bool = False


def candidate_protocols(cfg: TrainConfig) -> list[Protocol]:
    """The rung protocol and the candidates the stopping policy may compare it with (each only where it differs).
    Candidates are scored at the points before max_kimg, where stopping decisions are made; at max_kimg the final
    protocol (more samples, its own seed sets) is recorded instead."""
    out = [Protocol("rung", "the space's rung protocol (what the search scores at each rung)"),
           Protocol("samples_x2", "the rung protocol with twice the samples (other seeds included)", samples_factor=2),
           Protocol("raw", "the rung protocol on the raw weights instead of the EMA", weights="raw")]
    if cfg.eval.sampler_steps is not None and cfg.eval.sampler_steps < cfg.process.steps:
        out.append(Protocol("all_steps", "the rung protocol with all T sampler steps", all_steps=True))
    return out


def default_grid(space: Space, points: int = GRID_POINTS) -> list[dict]:
    """``points`` values per searched parameter across its range (log-spaced when it is searched on a log scale),
    with the space's own point added; the grid is their product."""
    axes = {}
    default = space.default_point()
    for name, spec in space.search.params.items():
        if spec.type == "categorical":
            values = list(spec.choices)
        else:
            lo, hi = float(spec.low), float(spec.high)
            raw = np.geomspace(lo, hi, points) if spec.log else np.linspace(lo, hi, points)
            values = sorted({round(float(v), 4) for v in raw} | {default[name]})
            if spec.type == "int":
                values = sorted({int(round(v)) for v in values})
        axes[name] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def parse_grid(space: Space, items: list[str]) -> list[dict]:
    """``--grid m=1.2,1.5,2`` (one item per parameter; the others keep the default grid)."""
    axes = {}
    for item in items:
        name, _, values = item.partition("=")
        if name not in space.search.params or not values:
            raise ConfigError(f"--grid {item!r}: expected NAME=V1,V2,... with NAME one of {list(space.search.params)}")
        spec = space.search.params[name]
        cast = int if spec.type == "int" else float if spec.type == "float" else str
        axes[name] = [cast(v) for v in values.split(",")]
    base = default_grid(space)
    names = list(space.search.params)
    per_axis = {n: sorted({p[n] for p in base}) for n in names}
    per_axis.update(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(per_axis[n] for n in names))]


def record_points(space: Space) -> list[float]:
    """The rungs and at least every RECORD_EVERY_KIMG up to max_kimg."""
    points = set(space.rungs())
    k = RECORD_EVERY_KIMG
    while k < space.max_kimg - 1e-9:
        points.add(round(k, 6))
        k += RECORD_EVERY_KIMG
    return sorted(points)


def run_config(space: Space, params: dict, seed: int, work: Path) -> TrainConfig:
    cfg = space.trial_config(params)
    eval_cfg = dataclasses.replace(cfg.eval, at_kimg=tuple(record_points(space)), grid=0)
    return dataclasses.replace(cfg, eval=eval_cfg, seed=seed, output=str(work), name=f"{config_key(params)}-s{seed}",
                               keep_checkpoints=1_000, log_every_s=1e9)


def _score(cfg: TrainConfig, weights: dict, eval_cfg) -> float:
    model = UNet(cfg.unet)
    model.load_state_dict(weights)
    model.eval()
    evaluator = Evaluator(dataclasses.replace(cfg, eval=eval_cfg), torch.device("cpu"), rank=0, world_size=1)
    value, _, _ = evaluator(model, cfg.process.build(cfg.data.image_size))
    return float(value)


def _final_eval(space: Space, cfg: TrainConfig, seed: int):
    f, ev = space.search.final, cfg.eval
    return dataclasses.replace(ev, samples=f.samples, sampler=f.sampler or ev.sampler,
                               sampler_steps=f.sampler_steps, eta=f.eta, seed=seed)


class TimedSession:
    """A LocalSession that also notes the wall time of every report (a segment's cost: training and evaluation)."""

    def __init__(self, run_dir: Path):
        self.inner = LocalSession(run_dir, quiet=True)
        self.last = time.perf_counter()
        self.seconds: list[float] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def report(self, metrics, state, grid, name, fault=None):
        self.inner.report(metrics, state, grid, name, fault)
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def record_run(space: Space, params: dict, seed: int, work: str) -> dict:
    """Train one (configuration, seed) to max_kimg and score it: {params, seed, points, final}. Runs in a worker
    process; resumes from the run's own checkpoints."""
    torch.set_num_threads(1)
    cfg = run_config(space, params, seed, Path(work))
    run_dir = Path(cfg.output) / cfg.name
    session = TimedSession(run_dir)
    done_file = run_dir / "scored.json"
    if done_file.is_file():
        return json.loads(done_file.read_text())
    started = time.perf_counter()
    run_worker(cfg, session)
    history = _history(run_dir)
    timing = _timing(run_dir, session)
    points = []
    for row in history:
        step = int(row["step"])
        state = load_checkpoint(run_dir / "checkpoints" / f"step_{step:09d}" / CHECKPOINT_FILE)
        scores = {}
        for protocol in candidate_protocols(cfg):
            if protocol.name != "rung" and float(row["kimg"]) >= space.max_kimg - 1e-9:
                continue
            if protocol.name == "rung":
                scores["rung"] = float(row[space.metric])
                continue
            ev = cfg.eval
            ev = dataclasses.replace(ev, samples=ev.samples * protocol.samples_factor,
                                     sampler_steps=None if protocol.all_steps else ev.sampler_steps)
            weights = state.model if protocol.weights == "raw" else (state.ema or state.model)
            scores[protocol.name] = _score(cfg, weights, ev)
        points.append({"kimg": round(float(row["kimg"]), 6), "seconds": timing.get(step, math.nan), "scores": scores})
    last = load_checkpoint(run_dir / "checkpoints" / f"step_{int(history[-1]['step']):09d}" / CHECKPOINT_FILE)
    final_started = time.perf_counter()
    values = [_score(cfg, last.ema or last.model, _final_eval(space, cfg, s)) for s in space.search.final.seed_sets()]
    out = {"params": params, "seed": seed, "points": points,
           "final": {"values": values, "seconds": time.perf_counter() - final_started},
           "seconds": time.perf_counter() - started}
    done_file.write_text(json.dumps(out))
    return out


def _history(run_dir: Path) -> list[dict]:
    """The run's reports, the last of each step (a resumed run may have written a step twice)."""
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "step" in row and not row.get("diverged"):
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def _timing(run_dir: Path, session: TimedSession) -> dict[int, float]:
    """Step -> seconds of the segment that ended there, kept in timing.json across resumes."""
    path = run_dir / "timing.json"
    known = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    steps = [int(r["step"]) for r in session.history]
    known.update(dict(zip(steps, session.seconds)))
    path.write_text(json.dumps(known))
    return known


def record(space: Space, grid: list[dict], seeds: int, out: Path, jobs: int, command: str,
           log=print) -> Table:
    """Record every (grid point, seed) not yet in ``out``, ``jobs`` at a time, writing ``out`` after each."""
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    table = new_table(space, command, record_points(space), [p.__dict__ for p in candidate_protocols(space.train)])
    if out.is_file():
        kept = load_table(out)
        if kept.data.get("search") != table.data["search"]:
            raise ConfigError(f"{out} was recorded for another search section; pass another --out")
        table = kept
    todo = [(params, seed) for params in grid for seed in range(seeds) if not table.has_run(params, seed)]
    log(f"recording {len(todo)} run(s) of {len(grid) * seeds} ({len(grid)} configurations x {seeds} seeds), "
        f"{jobs} at a time, into {out}")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(record_run, space, params, seed, str(work)): (params, seed) for params, seed in todo}
            for n, future in enumerate(as_completed(futures), 1):
                run = future.result()
                table.add_run(run)
                table.data["machine"] = machine()
                save_table(table, out)
                final = run["final"]["values"]
                log(f"[{n}/{len(todo)}] {run['params']} seed {run['seed']}: final {np.mean(final):.4f} "
                    f"({run['seconds']:.0f} s)")
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    return table
