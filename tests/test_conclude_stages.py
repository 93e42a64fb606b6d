"""The conclusion's stages one by one, without Ray: trial records made here, real checkpoints of the demo's UNet,
a real Optuna SQLite study, a real MLflow SQLite store, and an injected evaluator with a known landscape in place of
the Ray task (the task's scorer itself is tested in test_posthoc.py and end to end in test_search_e2e.py)."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from ray.train import Checkpoint as RayCheckpoint

from spd_tune.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from spd_tune.core.unet import UNet
from spd_tune.search.conclude import champion, final, finalists, posthoc, record, report, summary
from spd_tune.search.plan import Layout, finished_search
from spd_tune.search.space import load_space
from spd_tune.search.tracking import MLflowTracker
from spd_tune.search.trials import Report, TrialRecord
from spd_tune.train.averaging import SNAPSHOT_DIR
from spd_tune.train.session import CHECKPOINT_FILE

BASELINE = {"m": 2.69, "T": 200, "lr": 0.002}  # the demo space's own point
# trial id -> (params, rung scores at kimg 1, 2, 4): t2 is best by rung score, the baseline t0 is last
TRIALS = {"t0": (BASELINE, (3.0, 2.9, 2.8)), "t1": ({"m": 2.0, "T": 100, "lr": 0.001}, (2.5, 2.2, 2.0)),
          "t2": ({"m": 3.0, "T": 300, "lr": 0.003}, (2.4, 2.1, 1.9)), "t3": ({"m": 1.8, "T": 60, "lr": 0.004}, (2.6,))}
TRUE_FINAL = {"t0": 2.0, "t1": 1.0, "t2": 1.5, "t3": 9.0}  # the injected evaluator's landscape: t1 wins the final


def space_of(tmp_path, *sets):
    return load_space("demo", ["search.final.top_k=2", "search.final.seeds=2", "search.final.samples=16", *sets],
                      output=str(tmp_path))


def records() -> list[TrialRecord]:
    out = []
    for trial_id, (params, scores) in TRIALS.items():
        reports = tuple(Report(k, s, 10.0 * (i + 1)) for i, (k, s) in enumerate(zip((1.0, 2.0, 4.0), scores)))
        last = {"kimg": reports[-1].kimg, "time_total_s": reports[-1].seconds, "proxy_fd64": scores[-1], "nfe": 50}
        out.append(TrialRecord(trial_id, dict(params), reports, last))
    return out


def write_runs(space, storage: Path) -> None:
    """Each trial's Train run folder with a real checkpoint of the demo's UNet (t3 left none) and, for t0, EMA
    snapshots that the post-hoc stage deletes once t0 is not a finalist."""
    for trial_id, (params, _) in TRIALS.items():
        run = storage / f"train-{trial_id}"
        (run / SNAPSHOT_DIR).mkdir(parents=True)
        if trial_id == "t3":
            continue
        cfg = space.trial_config(params)
        torch.manual_seed(0)
        net = UNet(cfg.unet)
        save_checkpoint(run / "best" / CHECKPOINT_FILE, Checkpoint(
            unet=cfg.unet, process=cfg.process, model=net.state_dict(), ema=net.state_dict(),
            extra={"step": 40, "kimg": 4.0, "metric": TRIALS[trial_id][1][-1], "config": cfg.to_dict()}))


def find_checkpoint(run_path: str, metric: str):
    folder = Path(run_path) / "best"
    return RayCheckpoint.from_directory(str(folder)) if folder.is_dir() else None


class Landscape:
    """The injected evaluator: a score per trial, worse for fewer sampler steps, a little noise per seed."""

    def __init__(self):
        self.jobs = []

    def __call__(self, jobs):
        self.jobs += jobs
        return [{"score": TRUE_FINAL[f.trial_id] + 2.0 / job.point.sampler.steps + 1e-3 * (job.seed % 7),
                 "metric": "proxy_fd64", "nfe": job.point.sampler.steps, "samples": job.samples, "step": 40,
                 "point": job.point.as_dict(), "seconds": 1.5} for f, job in jobs]


class DictStore:
    def __init__(self):
        self.kept = {}

    def load(self, trial_id):
        return json.loads(json.dumps(self.kept.get(trial_id, {})))

    def save(self, trial_id, stored):
        self.kept[trial_id] = json.loads(json.dumps(stored))


@pytest.fixture
def stage_one(tmp_path):
    space = space_of(tmp_path, "search.posthoc.enabled=false")
    write_runs(space, tmp_path / "ray")
    return space, finalists.select(space, records(), lambda name: str(tmp_path / "ray" / name), find_checkpoint)


def test_finalists_are_the_top_k_by_rung_score_then_the_baseline(stage_one):
    _, chosen = stage_one
    assert [f.trial_id for f in chosen.chosen] == ["t2", "t1", "t0"]
    assert [f.baseline for f in chosen.chosen] == [False, False, True]
    assert chosen.chosen[0].score == 1.9 and chosen.chosen[0].params == TRIALS["t2"][0]
    assert set(chosen.run_paths) == set(TRIALS)  # every trial, for the post-hoc stage's clean-up


def test_the_final_protocol_scores_the_plain_point_and_resumes_from_its_store(stage_one):
    space, chosen = stage_one
    evaluate, store, said = Landscape(), DictStore(), []
    result = final.run(space, chosen, posthoc.NOT_RUN, store, evaluate, said.append)
    assert result.ran and [j.finalist.trial_id for j in result.judged] == ["t1", "t2", "t0"]  # by final mean
    assert len(evaluate.jobs) == 3 * 2  # three finalists, two seed sets, one point each
    assert {job.point for _, job in evaluate.jobs} == {final.plain_point(space)}
    assert {job.seed for _, job in evaluate.jobs} == set(space.search.final.seed_sets())
    best = result.judged[0]
    assert best.chosen == "plain" and len(best.pick.values) == 2 and best.pick.std > 0
    assert best.pick.mean == pytest.approx(1.0 + 2.0 / 50 + 1e-3 * sum(s % 7 for s in space.search.final.seed_sets()) / 2)
    assert said == []  # without the post-hoc stage, the final protocol says nothing of its own
    again = Landscape()
    assert final.run(space, chosen, posthoc.NOT_RUN, store, again, said.append) == result
    assert again.jobs == []  # a resumed driver reads every finished score back


def test_without_final_protocol_the_rung_order_stands(tmp_path):
    space = space_of(tmp_path, "search.posthoc.enabled=false", "search.final.top_k=0")
    write_runs(space, tmp_path / "ray")
    chosen = finalists.select(space, records(), lambda name: str(tmp_path / "ray" / name), find_checkpoint)
    evaluate = Landscape()
    result = final.run(space, chosen, posthoc.NOT_RUN, DictStore(), evaluate, print)
    assert not result.ran and [j.finalist.trial_id for j in result.judged] == ["t2"] and evaluate.jobs == []
    assert result.judged[0].pick is None


def test_the_study_store_keeps_final_scores_in_the_search_study_without_a_posthoc_study(stage_one, tmp_path):
    space, chosen = stage_one
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=space.train.name, storage=url)
    first = final.run(space, chosen, posthoc.NOT_RUN, final.StudyStore(space, url), Landscape(), print)
    again = Landscape()
    assert final.run(space, chosen, posthoc.NOT_RUN, final.StudyStore(space, url), again, print) == first
    assert again.jobs == []
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [space.train.name]
    attrs = optuna.load_study(study_name=space.train.name, storage=url).user_attrs
    assert set(attrs) == {f"{final.FINAL_ATTR}.{t}" for t in ("t0", "t1", "t2")}


def test_the_posthoc_stage_then_the_final_protocol_at_two_points(tmp_path):
    space = space_of(tmp_path, "search.posthoc.evaluations=3", "search.posthoc.k_max=40")
    write_runs(space, tmp_path / "ray")
    chosen = finalists.select(space, records(), lambda name: str(tmp_path / "ray" / name), find_checkpoint)
    url, evaluate, said = f"sqlite:///{tmp_path / 'optuna.db'}", Landscape(), []
    studied = posthoc.run(space, url, chosen, evaluate, said.append)
    assert studied.ran and {t: len(r) for t, r in studied.studies.items()} == {"t2": 3, "t1": 3, "t0": 3}
    assert studied.dropped == ("t3",) and not (tmp_path / "ray" / "train-t3" / SNAPSHOT_DIR).exists()
    firsts = {json.dumps(rows[0]["point"], sort_keys=True) for rows in studied.studies.values()}
    assert len(firsts) == 3  # each finalist draws its own points
    assert (tmp_path / "ray" / "train-t0" / SNAPSHOT_DIR).exists()  # a finalist keeps its snapshots
    assert said[:3] == [line for line in said if line.startswith("post-hoc trial ")]
    assert said[-1].startswith("post-hoc front (proxy_fd64 vs NFE): ")
    assert all(not any(q["proxy_fd64"] < p["proxy_fd64"] and q["nfe"] < p["nfe"] for q in studied.points)
               for p in studied.front)
    result = final.run(space, chosen, studied, final.StudyStore(space, url), evaluate, said.append)
    for j in result.judged:
        assert set(j.scored) == {"plain", "posthoc"} and j.posthoc_evaluations == 3
        assert j.chosen == min(j.scored, key=lambda n: j.scored[n].mean)
        assert j.stage_seconds == pytest.approx(1.5 * (3 + 2 * len({s.point for s in j.scored.values()})))
    assert sum(line.startswith("final protocol, trial ") for line in said) == 3
    assert optuna.load_study(study_name="demo/posthoc/t1", storage=url).metric_names == ["proxy_fd64"]
    stored = optuna.load_study(study_name="demo/posthoc/t1", storage=url).user_attrs[final.FINAL_ATTR]
    assert set(stored) == {"plain", "posthoc"}  # kept in the finalist's post-hoc study, as --resume reads it


def test_champion_summary_report_and_record(stage_one, tmp_path):
    space, chosen = stage_one
    result = final.run(space, chosen, posthoc.NOT_RUN, DictStore(), Landscape(), print)
    root = tmp_path / "demo"
    root.mkdir()
    winner = champion.crown(root, result, posthoc_ran=False, space=space)
    assert winner.best_dir == root / "best" and winner.judged.finalist.trial_id == "t1"
    slim = load_checkpoint(root / "best" / champion.MODEL_FILE)  # weights_only: no pickled code
    assert (root / "best" / champion.CHAMPION_GRID).is_file()  # drawn with the sampler it is judged at
    assert (root / "best" / champion.DATA_GRID).is_file()  # beside training images
    assert slim.extra["step"] == 40 and json.loads((root / "best" / "config.json").read_text())["process"]["m"] == 2.0
    summed = summary.summarise(space, root, chosen, posthoc.NOT_RUN, result, winner)
    doc = summed.document
    assert set(doc) == {"trial_id", "proxy_fd64", "checkpoint", "params", "baseline", "final_proxy_fd64", "final",
                        "final_seconds", "runner_up", "vs_runner_up", "vs_baseline", "best_dir", "finalists"}
    # one rule for every comparison: twice the standard error of the difference (here t2 is 0.5 worse: separated)
    assert doc["vs_runner_up"]["significant"] and doc["vs_runner_up"]["delta"] == pytest.approx(-0.5, abs=0.01)
    assert any(line.startswith("against the runner-up, trial t2 (") and line.endswith(
        "better than the runner-up at twice the standard error.") for line in summed.lines)
    assert doc["baseline"]["trial"] == "t0" and doc["vs_baseline"]["delta"] == pytest.approx(-1.0, abs=0.01)
    assert doc["runner_up"]["trial_id"] == "t2" and summed.front is None
    assert summed.costs["t1"]["stage_hours"] == pytest.approx(2 * 1.5 / 3600)  # one CPU per worker
    assert any(line.startswith("champion: trial t1, proxy_fd64 2.0000, final_proxy_fd64 ") for line in summed.lines)
    assert summed.metrics["trust_kimg4_final_pairs"] == 3
    rendered = report.render(space, root, chosen, posthoc.NOT_RUN, summed, optuna_url=_study(tmp_path, space),
                             argv=["demo"], gate=None)
    page = rendered.html.read_text()
    assert rendered.front_png is None and "<h2>Rung trust</h2>" in page
    assert "against the runner-up, trial t2" in page and "rung at 4 kimg against the final scores" in page
    assert "too few trials (4 < 5)" in page  # the correlations are greyed out, not read as evidence
    table = page[page.index("<h2>Trials</h2>"):page.index("<h2>Metric curves</h2>")]
    assert [table.index(f">{t}<") for t in ("t2", "t1", "t3", "t0")] == sorted(
        table.index(f">{t}<") for t in ("t2", "t1", "t3", "t0"))  # by best rung score: 1.9, 2.0, 2.6, 2.8
    assert any(line.startswith("the champion is not the trial with the best rung score (trial t2, proxy_fd64 "
                               "1.9000)") for line in summed.lines)
    layout = Layout.of(space, None, None, None, None)
    tracker = MLflowTracker(layout.tracking_uri, space.train.name, tmp_path / "artifacts", {})
    runs = {t: tracker.child(t, p, {}) for t, (p, _) in TRIALS.items()}
    recorded = record.record(space, layout, chosen, posthoc.NOT_RUN, result, summed, rendered)
    assert recorded.orphans == 0 and set(recorded.runs.trials) == set(TRIALS)
    info = json.loads((root / "best" / record.INFO_FILE).read_text())
    assert info == json.loads(json.dumps(doc))
    client = tracker.client
    assert client.get_run(runs["t1"]).data.metrics["final_proxy_fd64"] == pytest.approx(doc["final_proxy_fd64"])
    assert client.get_run(runs["t3"]).data.tags["spd_tune.cost_unit"] == "CPU"
    assert {"report.html", "summary.txt", "champion.json"} <= {a.path for a in client.list_artifacts(tracker.parent_id)}
    model = record.close(space, layout, summed, recorded)
    assert model == "spd-tune-demo@champion (version 1)"
    assert json.loads((root / "best" / record.INFO_FILE).read_text())["model"] == model
    assert finished_search(layout)["champion"] == "t1"
    told = optuna.load_study(study_name="demo", storage=layout.optuna_url).user_attrs[record.CHAMPION_ATTR]
    assert told["trial_id"] == "t1" and told["final_mean"] == doc["final"]["mean"] and told["sampling"] is None
    assert client.get_run(tracker.parent_id).info.status == "FINISHED"


def _study(tmp_path, space) -> str:
    url = f"sqlite:///{tmp_path / 'demo' / 'optuna.db'}"
    study = optuna.create_study(study_name=space.train.name, storage=url)
    for params, scores in TRIALS.values():
        study.enqueue_trial(params)
        trial = study.ask({"m": optuna.distributions.FloatDistribution(1.5, 3.5),
                           "T": optuna.distributions.IntDistribution(50, 400, log=True),
                           "lr": optuna.distributions.FloatDistribution(5e-4, 5e-3, log=True)})
        study.tell(trial, scores[-1])
    return url
