"""The search service: ``python -m spd_tune.search {cifar10 | imagenet64 | demo | SPACE.yaml}``.

Ray Tune runs one function trainable per trial, which launches that trial's Ray Train job (named
``train-<trial id>``, so a restarted trial resumes its own run). OptunaSearch (seeded TPE, persistent SQLite
study, the training config's own point first) proposes trials; ASHA stops poor ones at the kimg rungs, where
every trial evaluates and checkpoints; stopped trials reach Optuna as PRUNED with their intermediate values.
MLflow is written by one driver-side callback. The champion's checkpoint is copied to ``<output>/best/`` and
registered in the MLflow Model Registry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
from pathlib import Path

from .cli import Parser
from .cluster import Storage
from .config import ConfigError
from .search_space import Space, load_space


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a search writes: everything under one folder unless moved by --storage-path / --optuna-storage."""

    root: Path  # on the driver's machine: the Optuna study, the default MLflow store, best/
    storage: Storage  # Tune and Train results and checkpoints (shared storage on a multi-node cluster)
    optuna_url: str
    tracking_uri: str

    @classmethod
    def of(cls, space: Space, storage_path: str | None, optuna_storage: str | None, tracking_uri: str | None,
           shared_storage: bool | None = None):
        root = Path(space.train.output) / space.train.name
        from .tracking import tracking_uri_for

        return cls(root=root, storage=Storage.resolve(storage_path, shared_storage, str(root / "ray")),
                   optuna_url=optuna_storage or f"sqlite:///{root / 'optuna.db'}",
                   tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri_for(root))

    @property
    def storage_path(self) -> str:
        return self.storage.path

    def under_storage(self, *parts: str) -> str:
        """A path under the storage root, for local paths and bucket URIs alike."""
        return "/".join([self.storage.path.rstrip("/"), *parts])

    @property
    def experiment_dir(self) -> str:
        return self.under_storage("tune", self.root.name)


def trial_driver(params: dict, space: Space, storage_path: str) -> None:
    """One trial: build its training config and run it as a Ray Train job, forwarding reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .launch import build_trainer

    trial_id = tune.get_context().get_trial_id()
    cfg = space.trial_config({name: params[name] for name in space.search.params})
    trainer = build_trainer(cfg, space.metric, name=f"train-{trial_id}", storage_path=storage_path,
                            callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error:
        raise result.error


def diverged(result: dict | None) -> bool:
    """The run stopped on a non-finite loss (train.py): a failed trial, whatever its earlier scores."""
    return bool(result) and bool(result.get("diverged"))


def make_searcher(space: Space, layout: Layout):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class PruningOptunaSearch(OptunaSearch):
        """Intermediate values keyed by training images (stable across restores), and ASHA stops as PRUNED."""

        def suggest(self, trial_id: str):
            suggestion = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:  # Tune, Optuna and MLflow records join on the Tune trial id
                ot_trial.set_user_attr("spd_tune.trial_id", trial_id)
            return suggestion

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if isinstance(self.metric, list):  # Optuna keeps no intermediate values for several objectives
                return
            if trial_id not in self._completed_trials and trial_id in self._ot_trials:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            value = result.get(self.metric)
            step = int(round(float(result.get("kimg", 0)) * 1000))
            ot_trial = self._ot_trials[trial_id]
            if value is not None and math.isfinite(value) and step not in ot_trial.storage.get_trial(
                    ot_trial._trial_id).intermediate_values:
                ot_trial.report(value, step)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if diverged(result) and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._completed_trials.add(trial_id)
                ot_trial = self._ot_trials[trial_id]
                self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "spd_tune.diverged", True)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                return
            stopped = result is not None and float(result.get("kimg", 0)) < space.max_kimg - 1e-9
            if stopped and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._completed_trials.add(trial_id)
                try:
                    self._report(trial_id, result)  # Tune passes the stopping result here only
                    self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                except Exception as err:  # e.g. already finished by a driver that was killed after it
                    print(f"[spd-tune] Optuna trial of {trial_id} not updated: {err}", file=sys.stderr)
                return
            super().on_trial_complete(trial_id, result, error)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [space.default_point()] if space.search.enqueue_defaults else None
    multi = space.search.multi_objective.enabled
    return PruningOptunaSearch(
        metric=[space.metric, "nfe"] if multi else space.metric, mode=["min", "min"] if multi else "min",
        study_name=space.train.name, points_to_evaluate=points,
        sampler=optuna.samplers.TPESampler(seed=space.search.seed, n_startup_trials=space.search.startup_trials),
        storage=optuna.storages.RDBStorage(layout.optuna_url))


def concurrency(space: Space, driver: dict[str, float]) -> int:
    """Trials that fit at once on what the cluster (with its autoscaler) can hold: never more, or the rest would
    wait PENDING holding a driver each."""
    from .cluster import check_fits

    r = space.train.resources
    request = {**r.per_run(), **{k: v for k, v in driver.items() if k not in ("cpu", "memory")}}
    fit = check_fits(request, f"one trial ({r.workers} workers + its driver)",
                     "lower train.resources or use a larger cluster")
    wanted = space.search.max_concurrent
    if wanted is not None and wanted > fit:
        raise ConfigError(f"search.max_concurrent={wanted} trials do not fit: the cluster runs at most {fit} at once")
    return min(wanted or fit, space.search.trials)


def build_tuner(space: Space, layout: Layout, max_concurrent: int, resume: bool, driver: dict[str, float]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .tracking import MLflowCallback

    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, space=space, storage_path=layout.storage_path), driver)
    if resume:  # main() has checked that there is one
        return tune.Tuner.restore(layout.experiment_dir, trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    asha = space.search.asha
    multi = space.search.multi_objective.enabled
    if multi:
        # Optuna cannot prune multi-objective trials and ASHA ranks by one metric only, so every trial runs
        # to max_kimg: the front compares fully trained models
        from ray.tune.schedulers import FIFOScheduler

        scheduler = FIFOScheduler()
    else:
        scheduler = ASHAScheduler(time_attr="kimg", max_t=space.max_kimg, grace_period=asha.grace_kimg,
                                  reduction_factor=asha.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space={name: spec.tune_domain() for name, spec in space.search.params.items()},
        tune_config=tune.TuneConfig(
            # in multi-objective mode the searcher holds both objectives; Tune would overwrite them with one
            metric=None if multi else space.metric, mode=None if multi else "min",
            num_samples=space.search.trials, search_alg=make_searcher(space, layout),
            scheduler=scheduler,
            max_concurrent_trials=max_concurrent, time_budget_s=space.search.time_budget_s),
        run_config=tune.RunConfig(
            name=space.train.name, storage_path=layout.under_storage("tune"),
            callbacks=[MLflowCallback(layout.tracking_uri, space.train.name, str(layout.root / "mlartifacts"),
                                      space.max_kimg, list(space.search.params))],
            failure_config=tune.FailureConfig(max_failures=1)),
    )


def reconcile(space: Space, layout: Layout, results) -> int:
    """After the search, close what a killed driver left open: Optuna trials still RUNNING become FAIL and
    MLflow runs of trials this search does not hold are marked KILLED, each tagged as orphaned. Returns how many."""
    import optuna

    orphans = 0
    study = optuna.load_study(study_name=space.train.name, storage=layout.optuna_url)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "spd_tune.orphaned", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        orphans += 1
    from .tracking import close_orphan_runs

    known = {r.metrics.get("trial_id") for r in results if r.metrics}
    return orphans + close_orphan_runs(layout.tracking_uri, space.train.name, known)


def pareto_front(space: Space, results) -> list[dict]:
    """Trials whose (final score, NFE) no other trial beats in both, sorted by NFE."""
    points = []
    for result in results:
        m = result.metrics or {}
        if isinstance(m.get(space.metric), (int, float)) and math.isfinite(m[space.metric]) and "nfe" in m:
            points.append({"trial_id": m["trial_id"], space.metric: m[space.metric], "nfe": int(m["nfe"]),
                           "params": {k: result.config[k] for k in space.search.params}})
    front = [p for p in points if not any(
        q[space.metric] <= p[space.metric] and q["nfe"] <= p["nfe"] and
        (q[space.metric] < p[space.metric] or q["nfe"] < p["nfe"]) for q in points)]
    return sorted(front, key=lambda p: p["nfe"])


def ranked_trials(space: Space, results) -> list[tuple[float, object]]:
    """(best finite metric, result) of every trial, best first; in multi-objective mode only the Pareto front
    within the NFE budget, by final score."""
    if space.search.multi_objective.enabled:
        budget = space.search.multi_objective.nfe_budget
        keep = {p["trial_id"] for p in pareto_front(space, results) if budget is None or p["nfe"] <= budget}
        return sorted(((r.metrics[space.metric], r) for r in results if (r.metrics or {}).get("trial_id") in keep),
                      key=lambda item: item[0])
    ranked = []
    for result in results:
        if diverged(result.metrics):
            continue
        df = result.metrics_dataframe
        if df is None or space.metric not in df:
            continue
        values = [v for v in df[space.metric] if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            ranked.append((min(values), result))
    return sorted(ranked, key=lambda item: item[0])


def champion(space: Space, layout: Layout, results) -> dict | None:
    """Pick the champion (by the final protocol when configured), copy its best checkpoint to <root>/best/
    and register it in MLflow."""
    import ray.train

    ranked = ranked_trials(space, results)
    finalists, checkpoints = [], {}
    for score, result in ranked[: max(1, space.search.final.top_k)]:
        trial_id = result.metrics["trial_id"]
        run = ray.train.Result.from_path(layout.under_storage(f"train-{trial_id}"))
        checkpoint = run.get_best_checkpoint(space.metric, "min")
        if checkpoint is not None:
            checkpoints[trial_id] = checkpoint  # local or in a bucket: read through its own filesystem
            finalists.append({"trial_id": trial_id, space.metric: score, "checkpoint": checkpoint.path,
                              "params": {k: result.config[k] for k in space.search.params}})
    if not finalists:
        return None
    if space.search.final.top_k:
        from .final import rescore
        from .tracking import log_final_scores

        final_name = f"final_{space.metric}"
        for finalist, value in zip(finalists, rescore(space, [checkpoints[f["trial_id"]] for f in finalists])):
            finalist[final_name] = value
        log_final_scores(layout.tracking_uri, space.train.name, final_name, finalists)
        finalists.sort(key=lambda f: f[final_name] if math.isfinite(f[final_name]) else math.inf)
    info = finalists[0]
    target = layout.root / "best"
    if target.exists():
        shutil.rmtree(target)
    checkpoints[info["trial_id"]].to_directory(str(target))
    from .champion import export_weights, register

    weights = export_weights(target)
    info = {**info, "best_dir": str(target), "finalists": finalists if len(finalists) > 1 else None}
    (target / "champion.json").write_text(json.dumps(info, indent=2, default=str))
    info["model"] = register(space, layout, info["trial_id"], weights, target / "champion.json")
    return info


def summary_table(space: Space, results) -> str:
    rows = []
    for r in results:
        df = r.metrics_dataframe
        metric = df[space.metric].min() if df is not None and space.metric in df else math.nan
        kimg = r.metrics.get("kimg", 0) if r.metrics else 0
        state = "error" if r.error else "diverged" if diverged(r.metrics) else (
            "stopped" if kimg < space.max_kimg - 1e-9 else "complete")
        rows.append((metric, r.metrics.get("trial_id", "?") if r.metrics else "?", r.config, kimg, state))
    rows.sort(key=lambda row: (math.isnan(row[0]), row[0]))
    names = list(space.search.params)
    lines = [f"{'trial':<12}" + "".join(f"{n:>12}" for n in names) + f"{space.metric:>14}{'kimg':>8}  state"]
    for metric, trial_id, config, kimg, state in rows:
        values = "".join(f"{_fmt(config.get(n)):>12}" for n in names)
        lines.append(f"{trial_id:<12}{values}{metric:>14.4f}{kimg:>8g}  {state}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.search", description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="cifar10, imagenet64, demo, or a path to a space YAML")
    p.add_argument("--trials", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--output", help="where the search writes (default: ./spd_runs)")
    p.add_argument("--storage-path", help="Ray Tune/Train results and checkpoints: a local path, or on a multi-node "
                   "cluster a bucket URI (s3://, gs://) or a shared mount (default: SPD_TUNE_STORAGE, else --output)")
    p.add_argument("--shared-storage", action="store_true", default=None,
                   help="the local --storage-path is a file system every node mounts at the same place (NFS)")
    p.add_argument("--optuna-storage", help="the Optuna study's database URL (default: SQLite under --output)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under --output)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search")
    p.add_argument("--dry-run", action="store_true", help="print the space, the resource plan and the paths; exit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the space file, e.g. train.optim.warmup_kimg=1 or search.trials=20")
    args = p.parse_args(argv)
    from .launch import USER_ERRORS, ensure_ray

    sets = list(args.set)
    if args.trials is not None:
        sets.append(f"search.trials={args.trials}")
    if args.max_concurrent is not None:
        sets.append(f"search.max_concurrent={args.max_concurrent}")
    try:
        space = load_space(args.space, sets, output=args.output)
        layout = Layout.of(space, args.storage_path, args.optuna_storage, args.tracking_uri, args.shared_storage)
        if args.dry_run:
            print(describe(space, layout))
            return 0
        from .preflight import check_optuna_url, check_storage_path, check_tracking_uri

        check_storage_path(layout.storage.path)
        exists = _search_exists(layout)
        if not args.resume and (exists or (layout.root / "optuna.db").exists()):
            raise ConfigError(f"{layout.root} already holds a search named {space.train.name!r}: continue it with "
                              f"--resume, or start a new one with another --output (nothing was changed)")
        if args.resume and not exists:
            raise ConfigError(f"--resume: no search to resume under {layout.experiment_dir}")
        check_tracking_uri(layout.tracking_uri)
        check_optuna_url(layout.optuna_url)
        from .data import check_available
        from .evaluation import metric_name

        if metric_name(space.train) != space.metric:  # finds and checks the FID weights before Ray starts
            raise ConfigError(f"the Inception weights found are not pytorch-fid's: scores would not be {space.metric}")
        check_available(space.train.data)
        ensure_ray(args.address)
        from .cluster import check_storage, driver_resources

        check_storage(layout.storage)
        driver = driver_resources()
        max_concurrent = concurrency(space, driver)
        layout.root.mkdir(parents=True, exist_ok=True)
        # save Tune's experiment state (trials + searcher) at every step, so a killed driver loses as little
        # as possible; what it still loses is reconciled after the resumed search
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
        print(describe(space, layout, max_concurrent), flush=True)
        results = build_tuner(space, layout, max_concurrent, args.resume, driver).fit()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    orphans = reconcile(space, layout, results)
    if orphans:
        print(f"closed {orphans} Optuna trial(s) / MLflow run(s) left open by an interrupted driver "
              f"(tagged spd_tune.orphaned)")
    summary = summary_table(space, results)
    print(summary)
    best = champion(space, layout, results)
    if best is None:
        print("no trial produced a finite score; nothing registered", file=sys.stderr)
        return 1
    final = f"final_{space.metric}"
    final_text = f", {final} {best[final]:.4f}" if final in best else ""
    print(f"champion: trial {best['trial_id']}, {space.metric} {best[space.metric]:.4f}{final_text}, "
          f"params {best['params']}")
    print(f"  checkpoint copied to {best['best_dir']}; registered as {best.get('model')}")
    from .tracking import finish_search

    front = pareto_front(space, results) if space.search.multi_objective.enabled else None
    if front is not None:
        print(f"Pareto front ({space.metric} vs NFE): " + ", ".join(
            f"{p['trial_id']} ({p[space.metric]:.4f}, {p['nfe']} NFE)" for p in front))
    finish_search(layout.tracking_uri, space.train.name, summary, best, layout.optuna_url, front)
    print(f"compare the trials: python -m spd_tune.ui {layout.root}")
    return 0


def _search_exists(layout: Layout) -> bool:
    from ray import tune

    if layout.storage.is_uri:
        return tune.Tuner.can_restore(layout.experiment_dir)
    return Path(layout.experiment_dir).exists() and tune.Tuner.can_restore(layout.experiment_dir)


def describe(space: Space, layout: Layout, max_concurrent: int | None = None) -> str:
    lines = [f"search {space.train.name}: {space.search.trials} trials, metric {space.metric} (min)"]
    for name, spec in space.search.params.items():
        rng = f"{list(spec.choices)}" if spec.type == "categorical" else f"[{spec.low:g}, {spec.high:g}]"
        lines.append(f"  {name:<8} {spec.type:<12} {rng}{' log' if spec.log else ''}  -> {spec.path}")
    lines.append(f"  first trial (the config's own values): {space.default_point()}")
    lines.append(f"  ASHA rungs at kimg {space.rungs()} (evaluate + checkpoint at each)")
    r = space.train.resources
    lines.append(f"resources per trial: {r.workers} workers x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)"
                 + (f"; {max_concurrent} trials at once" if max_concurrent else ""))
    lines.append(f"writes: results {layout.storage_path}; Optuna {layout.optuna_url}; MLflow {layout.tracking_uri}; "
                 f"champion {layout.root / 'best'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
