"""An interrupted search stops at once, keeps everything and resumes: one tiny search, run as its own process
group on the session's Ray cluster, is interrupted in turn by SIGINT to its group while trials train, SIGKILL,
SIGTERM, a double SIGINT, and SIGINT during the post-hoc stage; each time ``--resume`` continues it, and the last
resume finishes it. A ``--resume`` after that finds nothing to do. Real Ray, Optuna (SQLite) and MLflow (SQLite)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from study_db import count

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 4
MAX_KIMG = 0.64
POSTHOC_EVALUATIONS = 3
ITEMS = [
    "train.data.demo_count=256", "train.batch=16", f"train.total_kimg={MAX_KIMG}", "train.eval.samples=16",
    "train.eval.sampler_steps=4", "train.eval.ref_count=32", "train.eval.grid=4", "train.log_every_s=1000",
    "search.asha.grace_kimg=0.16", f"search.asha.max_kimg={MAX_KIMG}", f"search.trials={TRIALS}",
    "search.final.top_k=1", "search.final.samples=16", "search.final.sampler_steps=4", "search.final.seeds=1",
    f"search.posthoc.evaluations={POSTHOC_EVALUATIONS}", "search.posthoc.batch=1", "search.posthoc.k_min=2",
    "search.posthoc.k_max=6", "search.posthoc.samples=48",
]
SIGNAL_DEADLINE_S = 30  # the promise: the search has exited within this long of the signal

# Tune's end state of a trial -> its Optuna state -> its MLflow status and tags (docs/search.md, "Trial states")
STATE_MAP = {
    "completed": ("COMPLETE", "FINISHED", {"spd_tune.stopped_early": "false"}),
    "stopped early": ("PRUNED", "FINISHED", {"spd_tune.stopped_early": "true"}),
    "diverged": ("FAIL", "FAILED", {"spd_tune.diverged": "true"}),
    "error": ("FAIL", "FAILED", {"spd_tune.error": "true"}),
}


def _checkpoints(root: Path) -> int:
    return len(list((root / "ray").glob("train-*/step_*")))


def _experiment_states(root: Path) -> int:
    """Tune writes a new experiment_state file each time a driver (re)starts its loop."""
    return len(list((root / "ray" / "tune" / "demo").glob("experiment_state-*.json")))


def _told_posthoc(root: Path) -> int:
    return count(root / "optuna.db", "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE study_name "
                                      "LIKE 'demo/posthoc/%' AND state IN ('COMPLETE', 'FAIL')")


def _registered_versions(root: Path) -> int:
    return count(root / "mlflow.db", "SELECT COUNT(*) FROM model_versions")


class Search:
    """The search's command line, run as its own process group (as a terminal runs a foreground job)."""

    def __init__(self, out: Path, env: dict):
        self.out, self.env, self.root = out, env, out / "demo"
        self.args = [sys.executable, "-m", "spd_tune.search", "demo", "--output", str(out)]
        for item in [*ITEMS, f"train.data.cache_dir={out / 'cache'}"]:
            self.args += ["--set", item]
        self.runs = 0

    def run(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        self.runs += 1
        done = subprocess.run([*self.args, *extra], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        (self.out / f"run{self.runs}.log").write_text(done.stdout + done.stderr)
        return done

    def interrupt(self, *extra: str, when, signals: list[int], to_group: bool = True, gap_s: float = 0.5) -> dict:
        """Start the search, send ``signals`` (``gap_s`` apart) once ``when()`` holds; its exit code, the seconds
        from the last signal to its exit, and its output."""
        self.runs += 1
        log_path = self.out / f"run{self.runs}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*self.args, *extra], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=ROOT, start_new_session=True)
            try:
                deadline = time.monotonic() + 420
                while time.monotonic() < deadline and not when() and proc.poll() is None:
                    time.sleep(0.2)
                assert proc.poll() is None, f"the search ended before the signal:\n{log_path.read_text()[-3000:]}"
                for i, signum in enumerate(signals):
                    if i:
                        time.sleep(gap_s)
                    os.killpg(proc.pid, signum) if to_group else os.kill(proc.pid, signum)
                sent = time.monotonic()
                code = proc.wait(timeout=120)
                return {"code": code, "seconds": time.monotonic() - sent, "output": log_path.read_text()}
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _snapshot(root: Path) -> dict:
    return {"versions": _registered_versions(root), "finished": (root / "search_finished.json").exists()}


@pytest.fixture(scope="module")
def chain(ray_cluster, tmp_path_factory):
    """The one search, interrupted in every way in turn; what each step saw."""
    out = tmp_path_factory.mktemp("interrupted")
    search = Search(out, {**os.environ, "RAY_ADDRESS": ray_cluster.address})
    root, seen = search.root, {}
    # 1. Ctrl-C in a terminal: SIGINT to the whole process group, while trials train and one has a checkpoint
    seen["sigint"] = search.interrupt(when=lambda: _checkpoints(root) >= 1, signals=[signal.SIGINT])
    seen["sigint"].update(_snapshot(root), checkpoints=_checkpoints(root))
    # 2. a driver that runs no code of its own: SIGKILL, once the resumed trials have trained further
    before = _checkpoints(root)
    seen["sigkill"] = search.interrupt("--resume", when=lambda: _checkpoints(root) > before,
                                       signals=[signal.SIGKILL], to_group=False)
    time.sleep(3)  # Ray ends the killed driver's trials
    # 3. a scheduler's notice: SIGTERM to the process, once the resumed trials have trained further
    before = _checkpoints(root)
    seen["sigterm"] = search.interrupt("--resume", when=lambda: _checkpoints(root) > before,
                                       signals=[signal.SIGTERM], to_group=False)
    seen["sigterm"].update(_snapshot(root))
    # 4. an impatient user: Ctrl-C twice, once the resumed search is back in Tune's loop (it saved its state anew)
    before = _experiment_states(root)
    seen["double"] = search.interrupt("--resume", when=lambda: _experiment_states(root) > before,
                                      signals=[signal.SIGINT, signal.SIGINT])
    seen["double"].update(_snapshot(root))
    # 5. SIGINT during the post-hoc stage, after at least one post-hoc evaluation was told
    seen["posthoc"] = search.interrupt("--resume", when=lambda: _told_posthoc(root) >= 1, signals=[signal.SIGINT])
    seen["posthoc"].update(_snapshot(root), told=_told_posthoc(root))
    # 6. the resume that finishes, then one on the finished search
    seen["finish"] = search.run("--resume")
    seen["again"] = search.run("--resume")
    seen["again_versions"] = _registered_versions(root)
    seen["root"] = root
    return seen


RESUME_LINE = re.compile(r"^interrupted after (\d+m \d\ds|\d+h \d\dm \d\ds): continue with python -m "
                         r"spd_tune\.search demo --output \S+ .*--resume$", re.M)


@pytest.mark.timeout(900)
def test_sigint_to_the_group_stops_at_once_and_registers_nothing(chain):
    step = chain["sigint"]
    assert step["code"] == 130, step["output"][-3000:]
    assert step["seconds"] < SIGNAL_DEADLINE_S
    assert RESUME_LINE.search(step["output"]), step["output"][-2000:]
    assert step["versions"] == 0 and not step["finished"]
    # nothing concluded: no post-hoc, final protocol, champion or report
    assert "post-hoc trial" not in step["output"] and "champion:" not in step["output"]
    assert "Traceback" not in step["output"]


@pytest.mark.timeout(900)
def test_sigterm_stops_with_143_and_a_double_sigint_at_once(chain):
    term, double = chain["sigterm"], chain["double"]
    assert term["code"] == 143 and term["seconds"] < SIGNAL_DEADLINE_S, term["output"][-3000:]
    assert RESUME_LINE.search(term["output"]) and term["versions"] == 0
    assert double["code"] == 130 and double["seconds"] < 10, double["output"][-3000:]
    assert RESUME_LINE.search(double["output"]) and double["versions"] == 0
    for step in (term, double):
        assert "Traceback" not in step["output"]


@pytest.mark.timeout(900)
def test_sigint_during_the_posthoc_stage_keeps_its_evaluations(chain):
    step = chain["posthoc"]
    assert step["code"] == 130 and step["seconds"] < SIGNAL_DEADLINE_S, step["output"][-3000:]
    assert step["told"] >= 1 and step["versions"] == 0 and not step["finished"]
    assert RESUME_LINE.search(step["output"])
    root = chain["root"]
    storage = f"sqlite:///{root / 'optuna.db'}"
    for name in optuna.get_all_study_names(storage):
        if name.startswith("demo/posthoc/"):  # each evaluation told once: none repeated by the resumed stage
            states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
            assert states.count(optuna.trial.TrialState.COMPLETE) == POSTHOC_EVALUATIONS, states


@pytest.mark.timeout(900)
def test_the_resumed_search_finishes_once_with_a_fully_trained_champion(chain):
    done = chain["finish"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Traceback" not in done.stderr
    root = chain["root"]
    info = json.loads((root / "best" / "champion.json").read_text())
    from spd_tune.checkpoint import load_checkpoint

    assert load_checkpoint(root / "best" / "model.pt").extra["kimg"] == pytest.approx(MAX_KIMG)
    assert _registered_versions(root) == 1 and info["model"].startswith("spd-tune-demo@champion")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_model_version_by_alias("spd-tune-demo", "champion").tags["trial_id"] == info["trial_id"]


@pytest.mark.timeout(900)
def test_tune_optuna_and_mlflow_agree_on_every_trial(chain):
    from ray.tune import ExperimentAnalysis

    root = chain["root"]
    trials = ExperimentAnalysis(str(root / "ray" / "tune" / "demo")).trials
    assert len(trials) == TRIALS
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    # what the SIGKILLed driver had opened for a trial it never saved is closed and labelled, never reused
    orphans = [t for t in study.trials if t.user_attrs.get("spd_tune.orphaned")]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in orphans)
    by_id = {t.user_attrs["spd_tune.trial_id"]: t for t in study.trials if t not in orphans}
    assert len(by_id) == TRIALS and set(by_id) == {t.trial_id for t in trials}
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert all(r.info.status == "KILLED" for r in runs if r.data.tags.get("spd_tune.orphaned") == "true")
    runs = [r for r in runs if r.data.tags.get("spd_tune.orphaned") != "true"]
    children = {r.data.tags["spd_tune.trial_id"]: r for r in runs if r.data.tags.get("spd_tune.role") == "trial"}
    parent = [r for r in runs if r.data.tags.get("spd_tune.role") == "search"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert "spd_tune.interrupted" not in parent[0].data.tags
    assert set(children) == set(by_id)
    for trial in trials:
        result = trial.last_result
        end = ("error" if trial.status == "ERROR" else "diverged" if result.get("diverged") else
               "completed" if result["kimg"] >= MAX_KIMG - 1e-9 else "stopped early")
        assert trial.status in ("TERMINATED", "ERROR"), trial
        optuna_state, mlflow_status, tags = STATE_MAP[end]
        run = children[trial.trial_id]
        assert by_id[trial.trial_id].state.name == optuna_state, (trial.trial_id, end)
        assert run.info.status == mlflow_status, (trial.trial_id, end)
        assert tags.items() <= run.data.tags.items() and "spd_tune.interrupted" not in run.data.tags
        assert not by_id[trial.trial_id].user_attrs.get("spd_tune.orphaned")


@pytest.mark.timeout(900)
def test_no_trial_with_a_checkpoint_trained_again_from_the_start(chain):
    """Every trial's scores reach MLflow once per evaluation point: a trial retrained from step 0 after an
    interruption would report its first rungs twice."""
    root = chain["root"]
    assert chain["sigint"]["checkpoints"] >= 1
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for run in client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                                  filter_string="tags.`spd_tune.role` = 'trial'"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "proxy_fd64")]
        assert len(steps) == len(set(steps)), (run.data.tags["spd_tune.trial_id"], steps)


@pytest.mark.timeout(900)
def test_resume_on_a_finished_search_has_nothing_to_do(chain):
    again = chain["again"]
    assert again.returncode == 0, again.stdout + again.stderr
    assert "has finished" in again.stdout and "nothing to do" in again.stdout
    assert chain["again_versions"] == 1


@pytest.mark.timeout(900)
def test_the_gate_is_logged_kept_across_resumes_and_its_anchors_ran_to_the_end(chain):
    """The demo's default stopping: GatedASHA, its state in gate_state.json across five restores, its anchors (the
    first trial and every third) trained to max_kimg, its gates on the parent MLflow run."""
    from ray.tune import ExperimentAnalysis

    from spd_tune.search.schedulers import read_gates

    root = chain["root"]
    gate = read_gates(root / "gate_state.json")
    assert gate is not None and set(gate["gates"]) == {"0.16", "0.32"}
    trials = {t.trial_id: t for t in ExperimentAnalysis(str(root / "ray" / "tune" / "demo")).trials}
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{root / 'optuna.db'}")
    order = [t.user_attrs["spd_tune.trial_id"] for t in study.trials if not t.user_attrs.get("spd_tune.orphaned")]
    assert order[0] in gate["anchors"] and len(gate["anchors"]) >= 2  # the first trial and every third
    for anchor in gate["anchors"]:
        assert trials[anchor].last_result["kimg"] >= MAX_KIMG - 1e-9
    assert set(gate["stopped"]) <= set(trials) - set(gate["anchors"])
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("demo").experiment_id],
                                filter_string="tags.`spd_tune.role` = 'search'")[0]
    for rung, state in gate["gates"].items():
        pairs = client.get_metric_history(parent.info.run_id, f"gate_kimg{rung}_pairs")
        assert pairs and pairs[-1].value <= state["pairs"]  # logged as results arrived
    report = (root / "report.html").read_text()
    assert "Early-stopping gate" in report and all(a in report for a in gate["anchors"])
