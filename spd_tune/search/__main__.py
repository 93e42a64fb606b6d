"""The search service: ``python -m spd_tune.search {cifar10 | imagenet64 | demo | SPACE.yaml}``.

Ray Tune runs one function trainable per trial, which launches that trial's Ray Train job (named
``train-<trial id>``, so a restarted trial resumes its own run). Our Optuna searcher (seeded TPE, persistent SQLite
study, the training config's own point first) proposes trials; ASHA stops poor ones at the kimg rungs, where
every trial evaluates and checkpoints; stopped trials reach Optuna as PRUNED with their intermediate values.
MLflow is written by one driver-side callback. After the ASHA phase, each finalist's EMA width and sampler can
be searched on its trained weights (the post-hoc stage, ``search.posthoc``), then the final protocol picks the
champion, whose weights are copied to ``<output>/best/`` and registered in the MLflow Model Registry.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time

from ..cli import run_main
from ..cluster import check_storage, check_storage_path, driver_resources, ensure_ray
from ..data import check_available, dataset
from ..errors import ConfigError, WeightsError
from ..fid import resolve_fid_weights
from ..train.averaging import snapshot_plan
from ..train.config import resolve_on_driver
from ..train.evaluation import resolved_metric_name
from .cli import parse
from .console import RAY_LOG, ray_output_to, tune_output_to
from .costs import cost_table, cost_unit, wall_clock_line
from .fit import describe_fit, write_fit_plot
from .interrupt import Interrupts, SearchInterrupted, duration
from .plan import Layout, concurrency, finished_search, search_exists
from .preflight import check_optuna_url, check_study_exists, check_tracking_uri
from .space import SPACE_FILE, Space, load_space, posthoc_protocol, space_record


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse(argv)
    sets = list(args.set)
    if args.trials is not None:
        sets.append(f"search.trials={args.trials}")
    if args.max_concurrent is not None:
        sets.append(f"search.max_concurrent={args.max_concurrent}")
    if args.budget_hours is not None:
        sets.append(f"search.budget_hours={args.budget_hours}")
    if args.data_dir is not None:
        sets.append(f"train.data.root={json.dumps(args.data_dir)}")
    if args.fid_weights is not None:
        sets.append(f"train.eval.features.weights_path={json.dumps(args.fid_weights)}")
    found: dict = {}
    interrupts = Interrupts(lambda: _after_interrupt(found, argv))
    interrupts.install()
    try:
        with contextlib.ExitStack() as quiet:  # holds ray.log open from preflight's end to the search's
            try:
                code = run_main(lambda: _search(args, sets, found, quiet, interrupts))
                if code == 0 and "results" in found:
                    interrupts.check()  # Tune returned because of a signal: nothing concludes
                    from .conclude import conclude  # Ray Train, MLflow: imported once the search has run

                    code = conclude(found["space"], found["layout"], found["results"], argv, interrupts)
                    print(f"search wall time: {duration(time.monotonic() - interrupts.started)}")
                interrupts.check()  # a signal held during the last step
            except SearchInterrupted:
                _record_interruption(found)  # while Ray's output still goes to ray.log
                raise
    except SearchInterrupted:
        print(interrupts.summary(), file=sys.stderr, flush=True)
        return interrupts.code
    finally:
        interrupts.uninstall()
    return code


def _record_interruption(found: dict) -> None:
    """MLflow shows the interrupted search's open runs as KILLED (tagged), unless the search had finished; then
    the driver leaves Ray, so that the trials' last words stay in ray.log."""
    if "layout" in found and finished_search(found["layout"]) is not None:
        found["finished"] = True  # the signal came during the last step, which it let finish
    elif "layout" in found:
        from .mlflow_runs import mark_interrupted  # MLflow: imported once the search has started

        mark_interrupted(found["layout"].tracking_uri, found["space"].train.name)
    if "layout" in found:
        import ray  # started by now

        ray.shutdown()


def _after_interrupt(found: dict, argv: list[str]) -> str:
    """What the interrupted-search line says the user can do."""
    if found.get("finished"):
        return "the search had already finished; there is nothing to continue"
    command = shlex.join(["python", "-m", "spd_tune.search", *_without_resume(argv), "--resume"])
    if "layout" not in found and not any(a == "--resume" or a.startswith("--resume=") for a in argv):
        return f"the search had not started; nothing was recorded ({command} is not needed)"
    return f"continue with {command}"


def _without_resume(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--resume", "--resume=auto") or (arg == "auto" and i and argv[i - 1] == "--resume"):
            continue
        out.append(arg)
    return out


def _finished_or_checked(args: argparse.Namespace, layout: Layout, name: str, found: dict) -> bool:
    """Settle ``--resume`` (auto: resume what is there, start what is not) against what the output holds; True
    when the search has finished already and there is nothing to do."""
    auto = args.resume == "auto"
    if auto:
        args.resume = "yes" if search_exists(layout) else None
        print(f"--resume auto: {'continuing the search' if args.resume else 'no search yet; starting one'} under "
              f"{layout.root}", flush=True)
    done = finished_search(layout) if args.resume else None
    if done is not None:
        found["finished"] = True
        print(f"--resume: the search under {layout.root} has finished (champion: trial {done['champion']}, "
              f"{done.get('model') or 'not registered'}); nothing to do")
        return True
    exists = search_exists(layout)
    # auto: a driver killed before Tune saved its first state left only the study, which the new search continues
    if not args.resume and (exists or ((layout.root / "optuna.db").exists() and not auto)):
        raise ConfigError(f"{layout.root} already holds a search named {name!r}: continue it with "
                          f"--resume, or start a new one with another --output (nothing was changed)")
    if args.resume and not exists:
        raise ConfigError(f"--resume: no search to resume under {layout.experiment_dir}")
    return False


def _search(args: argparse.Namespace, sets: list[str], found: dict, quiet: contextlib.ExitStack,
            interrupts: Interrupts) -> int:
    """Validate and check everything, then run the Tune search; the results go into ``found``."""
    if args.fid_weights is not None:  # the file named, and the real one, before anything else
        resolve_fid_weights(args.fid_weights, download=False)
    space = load_space(args.space, sets, output=args.output)
    layout = Layout.of(space, args.storage_path, args.optuna_storage, args.tracking_uri, args.shared_storage)
    if args.dry_run:
        print(describe(space, layout))
        print("\n".join([wall_clock_line(space, args.gpus), *this_machine(space)]))
        return 0
    check_storage_path(layout.storage.path)
    if _finished_or_checked(args, layout, space.train.name, found):
        return 0
    check_tracking_uri(layout.tracking_uri)
    check_optuna_url(layout.optuna_url)
    if args.resume:
        check_study_exists(layout.optuna_url, space.train.name)
    if resolved_metric_name(space.train) != space.metric:  # finds and checks the FID weights before Ray starts
        raise ConfigError(f"the Inception weights found are not pytorch-fid's: scores would not be {space.metric}")
    check_available(space.train.data)
    space = dataclasses.replace(space, train=resolve_on_driver(space.train))
    output = None
    if not args.verbose:  # validation and preflight have passed: from here on Ray's own output goes to ray.log
        output = quiet.enter_context(ray_output_to(layout.root / RAY_LOG))
    ensure_ray(args.address)
    if output is not None:
        output.capture_workers()
    interrupts.install()  # again: ray.init sets a SIGTERM handler of its own
    if args.resume:
        from .mlflow_runs import reopen_search_run  # MLflow: imported once the search really starts

        reopen_search_run(layout.tracking_uri, space.train.name)
    check_storage(layout.storage)
    driver = driver_resources()
    max_concurrent = concurrency(space, driver)
    layout.root.mkdir(parents=True, exist_ok=True)  # every check has passed: the search's folder may be written
    if output is not None:
        output.to_file()
        print(f"worker and Ray output: {output.path} (--verbose shows it here)", flush=True)
    # save Tune's experiment state (trials + searcher) at every step, so a killed driver loses as little
    # as possible; what it still loses is reconciled after the resumed search (a signal saves it at once)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    print(describe(space, layout, max_concurrent), flush=True)
    (layout.root / SPACE_FILE).write_text(json.dumps(space_record(space), indent=2, default=str))
    if space.fit:  # the fit's plot, kept with the search and logged on its parent run
        write_fit_plot(space.train, space.fit, layout.root / "spectrum.png")
        (layout.root / "spectrum_fit.json").write_text(json.dumps(space.fit, indent=2))
    from .tuner import build_tuner  # Ray Tune, Train and Optuna: imported only once the search really starts

    found.update(space=space, layout=layout)
    tuner = build_tuner(space, layout, max_concurrent, args.resume, driver)
    tune_output = tune_output_to(layout.root / RAY_LOG) if not args.verbose else contextlib.nullcontext()
    with interrupts.tune_loop(), tune_output:  # Tune's boxes and tables: in ray.log unless --verbose
        found["results"] = tuner.fit()
    return 0


def this_machine(space: Space) -> list[str]:
    """--dry-run: what this machine lacks for the search (a GPU, the FID weights), found without downloading."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lines = [f"this machine: {gpus} GPU(s)" if gpus else
             "this machine has no GPU: the search would run on CPUs, far slower than the estimate above"]
    if space.train.eval.features.weights == "pytorch-fid" and dataset(space.train.data.name).metric is None:
        try:
            found = resolve_fid_weights(space.train.eval.features.weights_path, download=False)
            lines.append(f"FID weights: {found.path}")
        except WeightsError:
            lines.append("FID weights: not on this machine (the search downloads them, or give --fid-weights PATH; "
                         "without them it stops before Ray starts)")
    return lines


def describe(space: Space, layout: Layout, max_concurrent: int | None = None) -> str:
    lines = [f"search {space.train.name}: {space.search.trials} trials, metric {space.metric} (min)"]
    for name, spec in space.search.params.items():
        rng = f"{list(spec.choices)}" if spec.type == "categorical" else f"[{spec.low:g}, {spec.high:g}]"
        lines.append(f"  {name:<8} {spec.type:<12} {rng}{' log' if spec.log else ''}  -> {spec.path}")
    if space.fit:
        lines += describe_fit(space.fit)
    source = "the config's own values, with the fitted ones" if space.fit else "the config's own values"
    lines.append(f"  first trial ({source}): {space.default_point()}")
    lines.append(f"  ASHA rungs at kimg {space.rungs()} (evaluate + checkpoint at each)")
    gate = space.search.gate
    if gate.enabled and not space.search.multi_objective.enabled:
        anchors = gate.anchors(space.search.trials)
        lines.append(f"  gate: a rung stops trials only once the lower 95% bound of its rank agreement with the highest "
                     f"kimg reached exceeds {gate.threshold:g} (at least {gate.min_pairs} pairs); anchors: the first "
                     f"trial and one in every {gate.anchor_every} after it (one in every {gate.anchor_every_open} once "
                     f"every rung is trusted), up to {anchors} of {space.search.trials} trials, run to "
                     f"{space.max_kimg:g} kimg whatever the rungs say")
    ph, final = space.search.posthoc, space.search.final
    if ph.enabled:
        samples, seed = posthoc_protocol(space)
        k_high = f"min(T, {ph.k_max})" if ph.k_max else "T"
        lines.append(f"  post-hoc stage: {ph.evaluations} evaluations per finalist ({final.top_k}), sampler "
                     f"{'/'.join(ph.samplers)}, K in [{ph.k_min}, {k_high}] log"
                     + (f", sigma_rel in {list(ph.sigma_rel)} log" if ph.sigma_rel else "")
                     + f"; {samples} samples from seed {seed}")
    if final.top_k:
        lines.append(f"  final protocol: top {final.top_k}, {final.samples} samples from seed {final.seed}, sampler "
                     f"{final.sampler or space.train.eval.sampler}, K {final.sampler_steps or 'T'}"
                     + f", {final.seeds} seed set(s)"
                     + (" (each finalist at its plain and its best post-hoc point)" if ph.enabled else ""))
    if space.search.budget_hours is not None:
        unit = cost_unit(space)[0]
        lines.append(f"  budget: {space.search.budget_hours:g} {unit}-hours of trials (no new trial once the hours "
                     "spent plus one more trial's projected cost would exceed it; trials started together at the "
                     "beginning can overshoot it)")
    ema = snapshot_plan(space.train)
    if ema:
        lines.append(f"  {ema}")
    r = space.train.resources
    lines.append(f"resources per trial: {r.workers} workers x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)"
                 + (f"; {max_concurrent} trials at once" if max_concurrent else ""))
    lines.append(f"writes: results {layout.storage.path}; Optuna {layout.optuna_url}; MLflow {layout.tracking_uri}; "
                 f"champion {layout.root / 'best'}")
    if max_concurrent is None:  # --dry-run: what the stages will cost
        lines.append(cost_table(space))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
