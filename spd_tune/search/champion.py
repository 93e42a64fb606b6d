"""The search's winner: the final protocol re-scores the top trials (after their post-hoc studies when
``search.posthoc`` is enabled: search/finals.py), the best is copied to ``best/``, slimmed to weights for users and
registered in MLflow.

Rung scores rank trials cheaply (few samples, few sampler steps); the champion is picked by the final protocol
(e.g. 50k samples at full T), run as one Ray task per finalist with one worker's resources. The registered model
is ``spd-tune-<dataset>`` with the alias ``champion``; its files are ``model.pt`` (EMA weights and the configs,
loadable with ``weights_only=True`` through ``spd_tune.checkpoint.load_checkpoint``) and ``config.json``. No
pickled code is stored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import ray

from ..core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..core.samplers import uses_eta
from ..posthoc import RunFiles, averaged_weights
from ..train.averaging import SNAPSHOT_DIR
from ..train.config import TrainConfig
from ..train.driver import best_checkpoint, local_folder
from ..train.evaluation import Evaluator
from ..train.session import CHECKPOINT_FILE
from ..typed import from_dict
from .finals import Finalist, drop_snapshots, run_finals, run_posthoc, with_choice
from .front import nondominated, plot_front, posthoc_points
from .interrupt import gather
from .results import final_metric_name, ranked_trials, seed_set_result, versus
from .space import Space
from .tracking import client_for, log_final_scores, log_posthoc, trial_run_id
from .trials import TrialRecord

log = logging.getLogger("spd_tune.champion")
MODEL_FILE = "model.pt"
INFO_FILE = "champion.json"


def final_config(space: Space, seed: int):
    f = space.search.final
    ev = space.train.eval
    return dataclasses.replace(space.train, eval=dataclasses.replace(
        ev, samples=f.samples, sampler=f.sampler or ev.sampler, sampler_steps=f.sampler_steps, eta=f.eta,
        seed=seed))


def _rescore(cfg_dict: dict, checkpoint) -> tuple[float, float]:
    """(score, seconds) of one seed set."""
    import time

    import torch

    started = time.monotonic()
    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with checkpoint.as_directory() as directory:  # a ray.train.Checkpoint: local, NFS or a bucket
        state = load_checkpoint(Path(directory) / CHECKPOINT_FILE, map_location=device)
    model, schedule = state.build(device=device)
    value, _, _ = Evaluator(cfg, device, 0, 1)(model, schedule)
    return value, time.monotonic() - started


def rescore(space: Space, checkpoints: list) -> list[dict]:
    """The final protocol on each of the given ray.train.Checkpoints, one task per seed set, in parallel as far as
    the cluster allows: {mean, std, values, seconds} per checkpoint."""
    r = space.train.resources
    task = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, resources=r.custom or None)(_rescore)
    sets = space.search.final.seed_sets()
    cfgs = [final_config(space, seed).to_dict() for seed in sets]
    refs = [[task.remote(cfg, checkpoint) for cfg in cfgs] for checkpoint in checkpoints]
    out = []
    for runs in (gather(r) for r in refs):
        out.append({**seed_set_result([value for value, _ in runs]), "seconds": sum(s for _, s in runs)})
    return out


def baseline_trial(space: Space, records: list[TrialRecord]) -> str | None:
    """The trial of the space's own point (enqueued first: the paper's configuration), if the space enqueues it
    and the final protocol runs."""
    if not (space.search.enqueue_defaults and space.search.final.top_k):
        return None
    point = space.default_point()
    for record in records:
        if record.trial_id and {k: record.params.get(k) for k in point} == point:
            return record.trial_id
    return None


def finalists_of(space: Space, layout, records: list[TrialRecord]) -> list[Finalist]:
    """The top_k trials by rung score (at least one) that left a checkpoint, best first, then the baseline trial
    when it is not among them."""
    out = []
    baseline = baseline_trial(space, records)
    ranked = ranked_trials(space, records)
    chosen = ranked[: max(1, space.search.final.top_k)]
    chosen += [(score, r) for score, r in ranked[len(chosen):] if r.trial_id == baseline]
    for score, record in chosen:
        trial_id = record.trial_id
        run_path = layout.under_storage(record.run_name)
        checkpoint = best_checkpoint(run_path, space.metric)
        if checkpoint is not None:  # local or in a bucket: read through its own filesystem
            params = {k: record.params[k] for k in space.search.params}
            out.append(Finalist(trial_id, score, params, space.trial_config(params), run_path, checkpoint,
                                baseline=trial_id == baseline))
    return out


def with_comparisons(rows: list[dict]) -> dict:
    """The champion's row (rows are best first) with its runner-up, the baseline and the comparison to it."""
    best = dict(rows[0])
    if "final" not in best:
        return best
    if len(rows) > 1:
        best["runner_up"] = {"trial_id": rows[1]["trial_id"], "final": rows[1]["final"]}
    base = next((r for r in rows if r.get("baseline")), None)
    best["baseline"] = None if base is None else {"trial": base["trial_id"], "mean": base["final"]["mean"],
                                                  "std": base["final"]["std"]}
    best["vs_baseline"] = None if base is None else versus(best["final"], base["final"])
    return best


def trial_run_paths(layout, records: list[TrialRecord]) -> dict[str, str]:
    """Trial id -> its Train run folder, for every trial that reported."""
    return {r.trial_id: layout.under_storage(r.run_name) for r in records if r.trial_id}


def choose_champion(space: Space, layout, records: list[TrialRecord]) -> dict | None:
    """Pick the champion (by the final protocol when configured, after the post-hoc stage when enabled) and copy
    its best checkpoint to <root>/best/ (registered later, by ``register_champion``)."""
    finalists = finalists_of(space, layout, records)
    if not finalists:
        return None
    if space.search.posthoc.enabled:
        return _after_posthoc(space, layout, records, finalists)
    final_name = final_metric_name(space.metric)
    rows = [{"trial_id": f.trial_id, space.metric: f.score, "checkpoint": f.checkpoint.path, "params": f.params,
             "baseline": f.baseline} for f in finalists]
    if space.search.final.top_k:
        for row, result in zip(rows, rescore(space, [f.checkpoint for f in finalists])):
            row[final_name] = result["mean"]
            row["final"] = {k: result[k] for k in ("mean", "std", "values")}
            row["final_seconds"] = result["seconds"]
        log_final_scores(layout.tracking_uri, space.train.name, final_name, rows)
        order = sorted(range(len(rows)), key=lambda i: rows[i][final_name] if math.isfinite(rows[i][final_name])
                       else math.inf)
        rows, finalists = [rows[i] for i in order], [finalists[i] for i in order]
    target = _copy_best(layout, finalists[0])
    export_weights(target)
    return _write_info(target, {**with_comparisons(rows), "best_dir": str(target),
                                "finalists": rows if len(rows) > 1 else None})


def _after_posthoc(space: Space, layout, records: list[TrialRecord], finalists: list[Finalist]) -> dict:
    """The post-hoc studies, their NFE front, then the final protocol at each finalist's plain and best post-hoc
    points; the champion is the best (trial, EMA, sampler) by final score."""
    metric, final_name = space.metric, final_metric_name(space.metric)
    studies = run_posthoc(space, layout.optuna_url, finalists)
    dropped = drop_snapshots(trial_run_paths(layout, records), finalists)
    if dropped:
        print(f"deleted the EMA snapshots of {len(dropped)} trial(s) that are not finalists", flush=True)
    points = posthoc_points(studies, metric)
    front = nondominated(points, metric)
    front_dir = layout.root / "posthoc"
    front_dir.mkdir(parents=True, exist_ok=True)
    (front_dir / "front.json").write_text(json.dumps(front, indent=2))
    plot = plot_front(points, front, metric, front_dir / "front.png")
    print(f"post-hoc front ({metric} vs NFE): " + ", ".join(
        f"{p['trial_id']} ({p[metric]:.4f}, {p['nfe']} NFE)" for p in front), flush=True)
    log_posthoc(layout.tracking_uri, space.train.name, metric, studies, front_dir / "front.json", plot)
    entries = with_choice(space, run_finals(space, layout.optuna_url, finalists, studies))
    rows = []
    for entry in entries:
        f, pick = entry["finalist"], entry[entry["chosen"]]
        row = {"trial_id": f.trial_id, metric: f.score, "checkpoint": f.checkpoint.path, "params": f.params,
               "baseline": f.baseline, final_name: pick["score"], "final": _final(pick), "chosen": entry["chosen"],
               "ema": pick["ema"], "sampling": pick["sampling"], "nfe": pick["nfe"],
               "posthoc_evaluations": len(studies[f.trial_id]),
               "posthoc_seconds": sum(r.get("seconds", 0.0) for r in studies[f.trial_id]),
               "final_seconds": sum(entry[n].get("seconds", 0.0) for n in ("plain", "posthoc") if n in entry)}
        for name in ("plain", "posthoc"):
            if name in entry:
                row[name] = {final_name: entry[name]["score"], "final": _final(entry[name]), "nfe": entry[name]["nfe"],
                             "ema": entry[name]["ema"], "sampling": entry[name]["sampling"]}
        rows.append(row)
        print(f"final protocol, trial {f.trial_id}{' (baseline)' if f.baseline else ''}: " + "; ".join(
            f"{name} {row[name]['final']['mean']:.4f} ± {row[name]['final']['std']:.4f} ({describe_choice(row[name])})"
            for name in ("plain", "posthoc") if name in row) + f" -> {entry['chosen']}", flush=True)
    log_final_scores(layout.tracking_uri, space.train.name, final_name, rows)
    best, entry = with_comparisons(rows), entries[0]
    target = _copy_best(layout, entry["finalist"])
    sigma_rel = entry[entry["chosen"]]["point"]["sigma_rel"]
    weights, choices = None, {"ema": best["ema"], "sampling": best["sampling"]}
    if sigma_rel is not None:  # rebuilt from the snapshots at the last one, as the post-hoc evaluation did
        with local_folder(f"{entry['finalist'].run_path}/{SNAPSHOT_DIR}") as snapshots:
            weights, step = averaged_weights(RunFiles(target / CHECKPOINT_FILE, snapshots), sigma_rel)
        choices.update(step=step, kimg=entry["finalist"].cfg.kimg_at(step))  # the weights' own training point
    export_weights(target, weights, choices)
    return _write_info(target, {
        **best, "best_dir": str(target), "finalists": rows, "posthoc_front": str(front_dir / "front.json")})


def _final(scored: dict) -> dict:
    return {"mean": scored["score"], "std": scored.get("std", math.nan), "values": scored.get("values", [])}


def describe_choice(row: dict) -> str:
    s, e = row["sampling"], row["ema"]
    text = f"{s['sampler']} {s['steps']} steps" + (f" eta {s['eta']:.2f}" if uses_eta(s["sampler"]) else "")
    return text + (f", sigma_rel {e['sigma_rel']:.3f}" if e["kind"] == "power" else f", ema rate {e['rate']:g}")


def _copy_best(layout, finalist: Finalist) -> Path:
    target = layout.root / "best"
    if target.exists():
        shutil.rmtree(target)
    finalist.checkpoint.to_directory(str(target))
    return target


def _write_info(target: Path, info: dict) -> dict:
    """best/champion.json; the registration itself waits for ``register_champion``, the search's last step."""
    (target / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return info


def register_champion(space: Space, layout, info: dict) -> str | None:
    """Register best/ (model.pt, config.json, champion.json) as the model's ``champion`` version; champion.json
    then names the version. Returns 'name@alias (version N)' or None."""
    target = Path(info["best_dir"])
    tags = {k: json.dumps(info[k], sort_keys=True) for k in ("ema", "sampling") if k in info}
    info["model"] = register(space, layout, info["trial_id"], target / MODEL_FILE, target / INFO_FILE, tags)
    (target / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return info["model"]


def export_weights(best_dir: Path, weights: dict | None = None, choices: dict | None = None) -> Path:
    """best/checkpoint.pt (full training state) -> best/model.pt (EMA weights, or ``weights``, + configs and the
    chosen ``ema``/``sampling`` as plain values) and best/config.json."""
    state = load_checkpoint(Path(best_dir) / CHECKPOINT_FILE)
    slim = Checkpoint(unet=state.unet, process=state.process, model=weights or state.ema or state.model,
                      extra={"step": state.extra.get("step"), "kimg": state.extra.get("kimg"),
                             "metric": state.extra.get("metric"), **(choices or {})})
    path = save_checkpoint(Path(best_dir) / MODEL_FILE, slim)
    (Path(best_dir) / "config.json").write_text(json.dumps(state.extra.get("config", {}), indent=2, sort_keys=True))
    return path


def register(space, layout, trial_id: str, weights: Path, info_file: Path, tags: dict | None = None) -> str | None:
    """Log the champion's files on its trial's run and register them; returns 'name@alias' or None."""
    name = f"spd-tune-{space.train.data.name}"
    try:
        client = client_for(layout.tracking_uri)
        experiment = client.get_experiment_by_name(space.train.name)
        run_id = trial_run_id(client, experiment.experiment_id, trial_id)
        if run_id is None:
            return None
        run = client.get_run(run_id)
        for path in (weights, weights.parent / "config.json", info_file):
            client.log_artifact(run.info.run_id, str(path), artifact_path="champion")
        client.set_tag(run.info.run_id, "spd_tune.champion", "true")
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description="SPD UNet chosen by spd-tune: EMA weights + config")
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/champion", run_id=run.info.run_id,
                                              tags={"trial_id": trial_id, **(tags or {})})
        client.set_registered_model_alias(name, "champion", version.version)
        return f"{name}@champion (version {version.version})"
    except Exception as err:  # the files are in best/ whatever the registry does
        log.warning("registering the champion in MLflow failed (%s: %s)", type(err).__name__, err)
        return None
