"""A real tiny search end to end: Ray Tune over Ray Train, a real Optuna SQLite study, a real MLflow store."""

import contextlib
import io
import json
import math
import re

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from spd_tune.checkpoint import load_checkpoint
from spd_tune.search.__main__ import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TRIALS = 5
TINY = [
    "train.data.demo_count=256", "train.batch=16", "train.total_kimg=0.64", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.16", "search.asha.max_kimg=0.64", "search.final.top_k=2", "search.final.samples=16",
    "search.final.sampler_steps=4", "search.posthoc.evaluations=2", "search.posthoc.k_min=2",
    "search.posthoc.k_max=6",
    # plain ASHA (PersistentASHA): these searches check stopping, pruning and their records; the gate's own checks
    # are tests/test_schedulers.py and the interrupted search of tests/test_interrupt.py
    "search.gate.enabled=false", f"search.trials={TRIALS}",
]
POSTHOC_EVALUATIONS = 2


@pytest.fixture(scope="module")
def finished_search(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    sets = [arg for item in TINY for arg in ("--set", item)]
    sets += ["--set", f"train.data.cache_dir={out / 'cache'}"]
    console, errors = io.StringIO(), io.StringIO()
    # Ray forwards worker output to sys.stdout / sys.stderr as they are at print time
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(errors):
        assert main(["demo", "--output", str(out), *sets]) == 0
    (out / "console.txt").write_text(console.getvalue())
    (out / "console_stderr.txt").write_text(errors.getvalue())
    return out / "demo"


def test_the_console_keeps_to_what_a_person_follows(finished_search):
    console = (finished_search.parent / "console.txt").read_text()
    assert "champion: trial" in console and "search wall time" in console and "report:" in console
    errors = (finished_search.parent / "console_stderr.txt").read_text()
    lines = console.splitlines()
    assert len(lines) + len(errors.splitlines()) <= 100, (len(lines), errors[-2000:])
    assert "RayTrainWorker" not in errors and "TrainController" not in errors  # workers: in ray.log
    # Tune's boxes, status tables and TensorBoard hint are in ray.log; the console has one line per rung event
    assert not any(box in console for box in ("Trial status", "== Status ==", "TensorBoard", "╭", "│"))
    rung_lines = [line for line in lines if re.match(r"\[spd-tune\] trial \w+: [\d.]+/0.64 kimg, proxy_fd64 ", line)]
    assert all("best so far" in line for line in rung_lines)
    first_rung = {line.split()[2] for line in rung_lines if float(line.split()[3].split("/")[0]) < 0.32}
    assert len(first_rung) == TRIALS  # every trial's first rung (0.16 kimg, reported at the step past it)
    ends = [line for line in lines if re.match(r"\[spd-tune\] trial \w+: (finished|stopped) at ", line)]
    assert len(ends) == TRIALS
    assert "[spd-tune] evaluating" not in console and "RayTrainWorker" not in console  # workers: in ray.log
    ray_log = (finished_search / "ray.log").read_text()
    assert "[spd-tune] evaluating" in ray_log and "RayTrainWorker" in ray_log
    assert "Trial status" in ray_log or "== Status ==" in ray_log  # Tune's tables (new or legacy output)


def test_every_trial_is_in_tune_optuna_and_mlflow(finished_search):
    root = finished_search
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == TRIALS
    assert study.metric_names == ["proxy_fd64"]  # optuna-dashboard names the objective
    champion = json.loads((root / "best" / "champion.json").read_text())
    told = study.user_attrs["spd_tune.champion"]  # the search's answer, beside Optuna's best trial
    assert told["trial_id"] == champion["trial_id"] and told["final_mean"] == champion["final"]["mean"]
    assert told["sampling"] == champion["sampling"] and told["final_std"] == champion["final"]["std"]
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert study.trials[0].params == {"m": 2.69, "T": 200, "lr": 0.002}  # the config's own point goes first
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was stopped early"
    assert all(t.intermediate_values for t in pruned)  # pruned with their intermediate values, not as COMPLETE
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("spd_tune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("spd_tune.role") == "trial"]
    assert len(parents) == 1 and len(children) == TRIALS
    assert parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert {"summary.txt", "champion.json", "optuna"} <= {a.path for a in client.list_artifacts(parent_id)}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert set(child.data.params) == {"m", "T", "lr"}
        curve = client.get_metric_history(child.info.run_id, "proxy_fd64")
        assert curve and all(math.isfinite(m.value) for m in curve)
        assert [m.step for m in curve] == sorted(m.step for m in curve) and curve[0].step == 160  # kimg axis
        assert any(a.path == "samples" for a in client.list_artifacts(child.info.run_id))
    stopped = [c for c in children if c.data.tags.get("spd_tune.stopped_early") == "true"]
    assert len(stopped) == len(pruned)
    assert all(c.info.status == "FINISHED" for c in children)  # stopped early is not a crash: the tag says it


def test_champion_is_copied_loadable_and_registered(finished_search):
    best = finished_search / "best"
    info = json.loads((best / "champion.json").read_text())
    finals = [f["final_proxy_fd64"] for f in info["finalists"]]
    # the top 2 by rung score, and the baseline (the space's first trial) when it is not one of them
    baseline = [f for f in info["finalists"] if f["baseline"]]
    assert len(baseline) == 1 and baseline[0]["params"] == {"m": 2.69, "T": 200, "lr": 0.002}
    top_two = sorted(info["finalists"], key=lambda f: f["proxy_fd64"])[:2]
    assert len(finals) == 2 + (baseline[0] not in top_two) and all(math.isfinite(v) for v in finals)
    assert info["final_proxy_fd64"] == min(finals)  # the final protocol picks the champion, by the mean
    # the final protocol's noise: the demo's 2 seed sets per point; mean, std and the values
    final = info["final"]
    assert len(final["values"]) == 2 and final["mean"] == pytest.approx(sum(final["values"]) / 2)
    assert final["std"] == pytest.approx(float(np.std(final["values"], ddof=1)))
    assert info["final_proxy_fd64"] == final["mean"]
    assert info["baseline"]["trial"] == baseline[0]["trial_id"]
    assert info["baseline"]["mean"] == baseline[0]["final"]["mean"]
    assert info["vs_baseline"]["delta"] == pytest.approx(final["mean"] - info["baseline"]["mean"])
    assert isinstance(info["vs_baseline"]["significant"], bool)
    state = load_checkpoint(best / "model.pt")
    model, schedule = state.build()
    assert state.extra["kimg"] > 0 and schedule.steps == state.process.steps
    assert "optimizer" not in state.extra  # slim weights for users
    client = MlflowClient(f"sqlite:///{finished_search / 'mlflow.db'}")
    version = client.get_model_version_by_alias("spd-tune-demo", "champion")
    files = {a.path for a in client.list_artifacts(version.run_id, "champion")}
    assert {"champion/model.pt", "champion/config.json"} <= files
    assert "final_proxy_fd64" in client.get_run(version.run_id).data.metrics


def _kill_when(args: list[str], env: dict, log_path, condition, poll_s: float) -> None:
    """Start the search ``args`` as its own process and SIGKILL it once ``condition()`` holds (within 420 s)."""
    import os
    import signal
    import subprocess
    import time

    with open(log_path, "w") as log:
        search = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 420
        while time.time() < deadline and not condition() and search.poll() is None:
            time.sleep(poll_s)
        assert search.poll() is None, "the search ended before it could be interrupted"
        os.kill(search.pid, signal.SIGKILL)
        search.wait()


def test_multi_objective_search_logs_a_pareto_front(ray_cluster, tmp_path):
    items = [*TINY[:-1], "search.trials=2", "search.final.top_k=1", "search.multi_objective.enabled=true",
             "train.eval.sampler_steps=null", f"train.data.cache_dir={tmp_path / 'cache'}"]
    args = ["demo", "--output", str(tmp_path)] + [arg for item in items for arg in ("--set", item)]
    assert main(args) == 0
    root = tmp_path / "demo"
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.directions) == 2 and len(study.trials) == 2
    assert study.metric_names == ["proxy_fd64", "nfe"]  # optuna-dashboard names both objectives
    # Optuna cannot prune multi-objective trials: every trial runs to the end and is told both values
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert sorted(t.values[1] for t in study.trials) == sorted(t.params["T"] for t in study.trials)  # NFE = T
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                              filter_string="tags.`spd_tune.role` = 'search'")
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "pareto_front.json" in artifacts
    front_file = client.download_artifacts(runs[0].info.run_id, "pareto_front.json", str(tmp_path))
    front = json.loads(open(front_file).read())
    champion = json.loads((root / "best" / "champion.json").read_text())
    assert front and champion["trial_id"] in {p["trial_id"] for p in front}
    # the post-hoc front is added to the trials' front, each point labelled with its stage
    assert {p["stage"] for p in front} <= {"asha", "posthoc"} and all(p["nfe"] >= 1 for p in front)
    assert "posthoc/front.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "posthoc")}
    assert champion["sampling"]["steps"] <= max(t.params["T"] for t in study.trials)


def _posthoc_studies(db) -> dict[str, optuna.Study]:
    storage = f"sqlite:///{db}"
    return {name.rsplit("/", 1)[1]: optuna.load_study(study_name=name, storage=storage)
            for name in optuna.get_all_study_names(storage) if name.startswith("demo/posthoc/")}


def test_posthoc_stage_contract(finished_search):
    """Post-hoc results reach Optuna, MLflow, champion.json, model.pt, the registry and the sample CLI."""
    from spd_tune.sample import main as sample_main

    root = finished_search
    info = json.loads((root / "best" / "champion.json").read_text())
    finalists = [f["trial_id"] for f in info["finalists"]]
    studies = _posthoc_studies(root / "optuna.db")
    assert set(studies) == set(finalists)
    assert len({json.dumps(s.trials[0].params, sort_keys=True) for s in studies.values()}) == len(studies)  # own draws
    for study in studies.values():  # each finalist's own seeded study, run to its number of evaluations
        assert len(study.trials) == POSTHOC_EVALUATIONS
        assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
        assert all(2 <= t.params["steps"] <= 6 for t in study.trials)
    # the champion is a (trial, EMA, sampler) triple, judged at its plain and its best post-hoc point
    assert info["ema"]["kind"] == "power" and 0.04 <= info["ema"]["sigma_rel"] <= 0.2
    assert set(info["sampling"]) == {"sampler", "steps", "eta"} and info["sampling"]["sampler"] in ("ancestral", "ddim")
    for f in info["finalists"]:
        assert {"plain", "posthoc"} <= set(f) and f["chosen"] in ("plain", "posthoc")
        assert f["final_proxy_fd64"] == f[f["chosen"]]["final_proxy_fd64"]
        assert f["plain"]["sampling"] == {"sampler": "ddim", "steps": 4, "eta": 0.0}  # the final protocol's own
        assert f["plain"]["ema"] == {"kind": "power", "sigma_rel": 0.1}  # the rung profile
    state = load_checkpoint(root / "best" / "model.pt")  # weights_only loading
    assert state.extra["ema"] == info["ema"] and state.extra["sampling"] == info["sampling"]
    # the sample CLI uses the saved sampling unless a flag overrides it
    out = root / "samples.npz"
    assert sample_main([str(root / "best" / "model.pt"), "--n", "2", "--out", str(out), "--device", "cpu"]) == 0
    meta = json.loads(str(np.load(out)["meta"]))
    chosen = info["sampling"]
    assert (meta["sampler"], meta["steps"], meta["eta"]) == (chosen["sampler"], chosen["steps"], chosen["eta"])
    assert sample_main([str(root / "best" / "model.pt"), "--n", "2", "--out", str(out), "--device", "cpu",
                        "--sampler", "ancestral", "--steps", "3"]) == 0
    meta = json.loads(str(np.load(out)["meta"]))
    assert (meta["sampler"], meta["steps"], meta["eta"]) == ("ancestral", 3, 0.0)
    # MLflow: no new runs; the finalists' runs hold their post-hoc evaluations, the parent the front
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == TRIALS + 1
    by_trial = {r.data.tags.get("spd_tune.trial_id"): r for r in runs}
    for trial_id in finalists:
        run_id = by_trial[trial_id].info.run_id
        history = client.get_metric_history(run_id, "posthoc_proxy_fd64")
        assert sorted(m.step for m in history) == list(range(POSTHOC_EVALUATIONS))
        assert "posthoc.json" in {a.path for a in client.list_artifacts(run_id)}
        assert {"final_proxy_fd64_plain", "final_proxy_fd64_posthoc"} <= set(client.get_run(run_id).data.metrics)
    parent = next(r for r in runs if r.data.tags.get("spd_tune.role") == "search")
    assert {"posthoc/front.json", "posthoc/front.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "posthoc")}
    version = client.get_model_version_by_alias("spd-tune-demo", "champion")
    assert json.loads(version.tags["ema"]) == info["ema"] and json.loads(version.tags["sampling"]) == info["sampling"]
    # snapshots are kept for the finalists only
    for trial_id in by_trial:
        if trial_id:
            assert (root / "ray" / f"train-{trial_id}" / "ema").is_dir() == (trial_id in finalists), trial_id


def test_rung_trust_and_costs_are_logged_and_agree_with_scipy(finished_search):
    """The parent run's trust_* metrics are scipy's Spearman over the trial table in MLflow, and every trial's
    cost is on its own run, adding up to the parent's total."""
    from scipy import stats

    root = finished_search
    info = json.loads((root / "best" / "champion.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("spd_tune.role") == "search")
    children = [r for r in runs if r.data.tags.get("spd_tune.role") == "trial"]
    curves = {c.data.tags["spd_tune.trial_id"]: {m.step: m.value for m in
                                                 client.get_metric_history(c.info.run_id, "proxy_fd64")}
              for c in children}
    plain = {f["trial_id"]: f["plain"]["final"]["mean"] for f in info["finalists"]}
    metrics = parent.data.metrics
    rungs = [160, 320, 640]  # nimg of the rungs at kimg 0.16, 0.32, 0.64

    def check(key, pairs):
        assert metrics[f"{key}_pairs"] == len(pairs)
        expected = stats.spearmanr(*zip(*pairs)).statistic if len(pairs) >= 2 else math.nan
        if math.isnan(expected):
            assert math.isnan(metrics[key])
        else:
            assert metrics[key] == pytest.approx(expected, abs=1e-9)

    for nimg in rungs:
        check(f"trust_kimg{nimg / 1000:g}_final", [(curves[t][nimg], plain[t]) for t in plain if nimg in curves[t]])
    for a, b in zip(rungs, rungs[1:]):
        check(f"trust_kimg{a / 1000:g}_kimg{b / 1000:g}",
              [(c[a], c[b]) for c in curves.values() if a in c and b in c])
    hours = []
    for child in children:  # stopped trials too
        assert child.data.tags["spd_tune.cost_unit"] == "CPU" and child.data.metrics["cost_hours"] > 0
        hours.append(child.data.metrics["cost_hours"])
    assert metrics["cost_hours_total"] == pytest.approx(sum(hours), rel=1e-9)
    assert metrics["cost_hours_no_early_stopping"] >= metrics["cost_hours_total"]
    summary = client.download_artifacts(parent.info.run_id, "summary.txt", str(root))
    text = open(summary).read()
    assert "CPU-h" in text and "seed sets" in text and "cost:" in text


def test_a_budget_stops_launching_trials_and_resume_keeps_what_was_spent(ray_cluster, tmp_path, capsys):
    """Trials run one at a time; once the hours spent plus one more trial's projected cost exceed the budget, no
    trial starts, and a resumed search does not forget what was spent."""
    budget = 1e-6  # less than any trial: the first trial starts (nothing is measured yet), no other
    items = [*TINY[:-1], "search.trials=4", "search.max_concurrent=1", "search.final.top_k=0",
             "search.posthoc.enabled=false", f"train.data.cache_dir={tmp_path / 'cache'}"]
    args = ["demo", "--output", str(tmp_path), "--budget-hours", str(budget)]
    args += [arg for item in items for arg in ("--set", item)]
    assert main([*args, "--resume", "auto"]) == 0  # --resume auto with nothing there starts the search
    root = tmp_path / "demo"

    def trials():
        return optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}").trials

    assert len(trials()) == 1
    out = capsys.readouterr().out
    assert "no new trials" in out and f"--resume auto: no search yet; starting one under {root}" in out
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    first = next(r for r in runs if r.data.tags.get("spd_tune.role") == "trial")
    assert first.data.metrics["cost_hours"] > budget  # what stopped the second trial
    assert main([*args, "--resume"]) == 0
    assert len(trials()) == 1  # the spent hours came back with the searcher's state: still no new trial
    assert main([*args, "--resume", "auto"]) == 0  # as a RayJob's retry runs it: the search is there, and finished
    out = capsys.readouterr().out
    assert f"--resume auto: continuing the search under {root}" in out and "has finished" in out


def test_the_report_is_one_self_contained_html_file(finished_search):
    """report.html parses, every figure is an embedded PNG that decodes, nothing points to the network, and it
    names every trial of the Optuna study; it is on the parent run too."""
    import base64
    import io
    from html.parser import HTMLParser

    import matplotlib.image

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.links, self.text, self.open = [], [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.open.append(tag)
            if tag == "img":
                self.images.append(attrs.get("src", ""))
            for key in ("src", "href"):
                if key in attrs:
                    self.links.append(attrs[key])

        def handle_data(self, data):
            self.text.append(data)

    root = finished_search
    page = (root / "report.html").read_text()
    parser = Collect()
    parser.feed(page)
    parser.close()
    assert len(parser.images) >= 5  # curves, trust, front, importances, two sample grids
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.size > 0
    assert not [link for link in parser.links if link.startswith(("http:", "https:", "//"))]
    text = " ".join(parser.text)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    for trial in study.trials:
        assert trial.user_attrs["spd_tune.trial_id"] in text
    assert "Reproduce the champion" in text and "python -m spd_tune.train demo" in text
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                                filter_string="tags.`spd_tune.role` = 'search'")[0]
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.fixture(scope="module")
def folder_search(ray_cluster, tmp_path_factory):
    """search_spaces/folder.yaml end to end on generated PNGs given with --data-dir, without the post-hoc stage;
    its first trial, the space's own point (the fit's m and c1), has a learning rate that trains nothing."""
    import torch
    from torchvision.utils import save_image

    from spd_tune.data.dead_leaves import cached_dead_leaves

    tmp_path = tmp_path_factory.mktemp("folder")
    folder = tmp_path / "my_images"
    folder.mkdir()
    for i, image in enumerate(cached_dead_leaves(96, 16, seed=7, cache_dir=str(tmp_path / "gen"))):
        save_image(torch.from_numpy(image).permute(2, 0, 1).float() / 255, folder / f"{i:03d}.png")
    items = [*TINY[:-1], "train.data.image_size=16", "train.model.preset=micro", "train.process.c2=1.0",
             "train.process.steps=100", "train.eval.features={dims: 64, weights: random}", "train.eval.ref_count=64",
             "train.resources={workers: 1, cpus_per_worker: 1}", "train.ema.snapshot_kimg=0",
             "search.params.T={path: process.steps, type: int, low: 50, high: 200, log: true}",
             "search.params.lr={path: optim.lr, type: float, low: 1e-7, high: 5e-3, log: true}",
             "train.optim.lr=1e-7", "train.optim.warmup_kimg=0", "search.trials=3", "search.final.top_k=1",
             "search.final.seeds=2", "search.posthoc.enabled=false"]
    args = ["folder", "--data-dir", str(folder), "--output", str(tmp_path)]
    args += [arg for item in items for arg in ("--set", item)]
    assert main(args) == 0
    return tmp_path / "folder"


def test_a_search_on_a_folder_of_images_is_centred_on_their_spectrum(folder_search):
    """The fit runs on the driver, the first trial uses it, every trial stays in the fitted ranges, and the parent
    run keeps the fit."""
    root = folder_search
    fit = json.loads((root / "spectrum_fit.json").read_text())
    assert fit["images"] == 96 and fit["fit"]["c2"] == 1.0
    study = optuna.load_study(study_name="folder", storage=f"sqlite:///{root / 'optuna.db'}")
    assert study.trials[0].params["m"] == pytest.approx(fit["fit"]["m"])
    assert study.trials[0].params["c1"] == pytest.approx(fit["fit"]["c1"])
    for trial in study.trials:
        for name in ("m", "c1"):
            low, high = fit["ranges"][name]
            assert low <= trial.params[name] <= high
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("folder").experiment_id],
                                filter_string="tags.`spd_tune.role` = 'search'")[0]
    assert {"spectrum_fit.json", "spectrum.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    # the fit's estimator, band and misfit line reach the parent run and the report; m's range covers every
    # estimator's m and the paper's 2.0 (widen is on by default)
    tags = parent.data.tags
    assert tags["spd_tune.spectrum_estimator"] == "whittle" and tags["spd_tune.spectrum_m"] == f"{fit['fit']['m']:.4g}"
    assert tags["spd_tune.spectrum_misfit"] == ("true" if fit["fit"]["misfit"] else "false")
    assert tags["spd_tune.spectrum_misfit_reason"] == fit["fit"]["misfit_reason"]
    low, high = fit["ranges"]["m"]
    assert low <= min(2.0, *(e["m"] for e in fit["fit"]["estimators"].values())) and high >= 2.0
    report = (root / "report.html").read_text()
    assert "The data&#x27;s spectrum" in report or "The data's spectrum" in report
    if fit["fit"]["misfit"]:
        assert "a single power law fits this data poorly" in report



def test_a_baseline_outside_the_top_k_is_still_a_finalist(folder_search):
    """The space's first trial (its own point) is always scored by the final protocol, so the champion is
    stated against it, even when its rung scores put it last (here: a learning rate that trains nothing)."""
    root = folder_search
    study = optuna.load_study(study_name="folder", storage=f"sqlite:///{root / 'optuna.db'}")
    assert study.trials[0].params["lr"] == 1e-7
    info = json.loads((root / "best" / "champion.json").read_text())
    by_rung = sorted(info["finalists"], key=lambda f: f["proxy_fd64"])
    baseline = [f for f in info["finalists"] if f["baseline"]]
    assert len(baseline) == 1 and baseline[0]["params"]["lr"] == 1e-7
    assert len(info["finalists"]) == 2 and by_rung[-1]["baseline"]  # top 1 by rung score, then the baseline
    assert info["baseline"]["trial"] == baseline[0]["trial_id"] and len(baseline[0]["final"]["values"]) == 2
    assert info["trial_id"] != baseline[0]["trial_id"] and info["vs_baseline"]["delta"] < 0
    # search.posthoc.enabled: false is the search without the stage: no post-hoc study, no chosen sampling
    assert not _posthoc_studies(root / "optuna.db")
    assert not {"ema", "sampling"} & set(info)
    # its final scores were kept in the search's own study as they came, for --resume
    attrs = optuna.load_study(study_name="folder", storage=f"sqlite:///{root / 'optuna.db'}").user_attrs
    assert {f"spd_tune.final.{f['trial_id']}" for f in info["finalists"]} <= set(attrs)


def test_a_finished_search_becomes_a_curve_table(finished_search, tmp_path):
    """python -m spd_tune.replay table: every trial a run, stopped ones truncated, finalists with final values."""
    import subprocess
    import sys

    from spd_tune.replay.simulate import Replay
    from spd_tune.replay.table import load_table

    out = tmp_path / "search.json"
    done = subprocess.run([sys.executable, "-m", "spd_tune.replay", "table", str(finished_search), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    table = load_table(out)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{finished_search / 'optuna.db'}")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert summary["runs"] == TRIALS and summary["ran_to_max_kimg"] == TRIALS - len(pruned)
    info = json.loads((finished_search / "best" / "champion.json").read_text())
    assert summary["with_final_scores"] == len(info["finalists"])
    runs = [r for c in table.configs for r in c["runs"]]
    assert all(r["points"] and r["points"][0]["kimg"] == 0.16 for r in runs)
    assert table.data["search"]["asha"]["grace_kimg"] == 0.16 and table.data["default_point"]["m"] == 2.69
    Replay(table)  # it replays


def test_both_uis_serve_the_search_on_loopback_and_stop_cleanly(finished_search):
    """python -m spd_tune.ui --optuna on the finished search: the MLflow UI answers with its runs and names the
    runs page, optuna-dashboard answers with the study and its post-hoc studies; both stop on SIGTERM."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from ray_cluster import free_port

    client = MlflowClient(f"sqlite:///{finished_search / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    port, optuna_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "spd_tune.ui", str(finished_search), "--port", str(port),
                             "--optuna", "--optuna-port", str(optuna_port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        start = time.time()
        while not any("optuna-dashboard for" in line for line in lines) and time.time() - start < 90:
            lines.append(proc.stdout.readline())
            assert proc.poll() is None or lines[-1], "".join(lines)
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs" in "".join(lines)
        body = json.dumps({"experiment_ids": [experiment.experiment_id], "max_results": 100}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.loads(response.read())["runs"]) == TRIALS + 1  # the trials and the search's parent
        with urllib.request.urlopen(f"http://127.0.0.1:{optuna_port}/api/studies", timeout=10) as response:
            names = {s["study_name"] for s in json.loads(response.read())["study_summaries"]}
        assert "demo" in names and any(n.startswith("demo/posthoc/") for n in names)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    time.sleep(1)
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert f"--port {port}" not in out and f"--port {optuna_port}" not in out  # nothing left behind
