"""Stage 5, champion: the best finalist's checkpoint copied to ``<output>/<space>/best/``, slimmed to the weights
users load (``model.pt``: the EMA weights, or the post-hoc average it was judged at, with the configs and the
chosen ``ema``/``sampling`` as plain values, loadable with ``weights_only=True``) and ``config.json``. No pickled
code is stored. champion.json and the registration come last, from the record stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...cluster import join_storage
from ...core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ...core.samplers import SamplerConfig
from ...data import load_images
from ...errors import DataError
from ...posthoc import RunFiles, averaged_weights
from ...sample import sample_checkpoint
from ...train.averaging import SNAPSHOT_DIR
from ...train.driver import local_folder
from ...train.session import CHECKPOINT_FILE, save_grid
from ..space import Space
from .final import FinalResult, Judged

BEST_DIR = "best"
MODEL_FILE = "model.pt"
CHAMPION_GRID, DATA_GRID = "champion_samples.png", "data_samples.png"  # the report's pair of grids
GRID_IMAGES = 16


@dataclass(frozen=True)
class Champion:
    judged: Judged  # the winning finalist, with its final scores when the protocol ran
    best_dir: Path
    choices: Mapping = field(default_factory=dict)  # model.pt's ema/sampling (and step/kimg of a rebuilt average)


def crown(root: Path, final: FinalResult, posthoc_ran: bool, space: Space) -> Champion | None:
    """Copy and slim the first of the judged finalists; None when there is none."""
    if not final.judged:
        return None
    judged = final.judged[0]
    target = Path(root) / BEST_DIR
    if target.exists():
        shutil.rmtree(target)
    judged.finalist.checkpoint.to_directory(str(target))  # a ray.train.Checkpoint: local, NFS or a bucket
    weights, choices = None, {}
    if posthoc_ran and judged.pick is not None:
        pick = judged.pick
        choices = {"ema": dict(pick.ema), "sampling": dict(pick.sampling)}
        if pick.point.sigma_rel is not None:  # rebuilt from the snapshots at the last one, as the evaluation did
            with local_folder(join_storage(judged.finalist.run_path, SNAPSHOT_DIR)) as snapshots:
                weights, step = averaged_weights(RunFiles(target / CHECKPOINT_FILE, snapshots), pick.point.sigma_rel)
            choices.update(step=step, kimg=judged.finalist.cfg.kimg_at(step))  # the weights' own training point
    export_weights(target, weights, choices)
    write_grids(target, space, judged)
    return Champion(judged, target, choices)


def write_grids(target: Path, space: Space, judged: Judged) -> None:
    """The champion's samples drawn with the sampler it is judged at (from the final protocol's first seed), and
    as many training images beside them: what the report shows."""
    s = judged.pick.sampling if judged.pick is not None else None
    sampler = SamplerConfig.of(s["sampler"], steps=s["steps"], eta=s["eta"]) if s else \
        space.train.eval.sampler_config()
    images, _ = sample_checkpoint(target / MODEL_FILE, GRID_IMAGES, sampler=sampler,
                                  first_seed=space.search.final.seed)
    save_grid(images, target / CHAMPION_GRID)
    try:
        save_grid(load_images(space.train.data)[:GRID_IMAGES], target / DATA_GRID)
    except (DataError, OSError):  # the report then says the data was not readable here
        pass


def export_weights(best_dir: Path, weights: dict | None = None, choices: Mapping | None = None) -> Path:
    """best/checkpoint.pt (full training state) -> best/model.pt (EMA weights, or ``weights``, + configs and the
    chosen ``ema``/``sampling`` as plain values) and best/config.json."""
    state = load_checkpoint(Path(best_dir) / CHECKPOINT_FILE)
    slim = Checkpoint(unet=state.unet, process=state.process, model=weights or state.ema or state.model,
                      extra={"step": state.extra.get("step"), "kimg": state.extra.get("kimg"),
                             "metric": state.extra.get("metric"), **(choices or {})})
    path = save_checkpoint(Path(best_dir) / MODEL_FILE, slim)
    (Path(best_dir) / "config.json").write_text(json.dumps(state.extra.get("config", {}), indent=2, sort_keys=True))
    return path
