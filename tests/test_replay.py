"""The replay: policies replayed on synthetic curve tables whose answer is known by construction. Mechanics only;
no tuned outcome on the real table is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spd_tune.replay.measure import compare, wilson
from spd_tune.replay.simulate import Replay
from spd_tune.replay.synthetic import synthetic_table
from spd_tune.replay.table import load_table, save_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    out = {}
    for kind in ("consistent", "late_bloomer"):
        out[kind] = folder / f"{kind}.json"
        save_table(synthetic_table(16, kind), out[kind])
    return out


@pytest.fixture(scope="module")
def results(tables):
    """Every policy on both tables, 8 seeds x 4 arrival orders, in this process."""
    return {kind: compare(str(path), seeds=8, orders=4, jobs=1) for kind, path in tables.items()}


def test_none_trains_everything_and_never_throws_the_best_away(results):
    for result in results.values():
        none = result["policies"]["none"]
        assert none["compute"] == pytest.approx(1.0) and none["compute_ci"] == pytest.approx([1.0, 1.0])
        assert none["p_thrown_away"] == 0.0


def test_on_rank_consistent_curves_asha_keeps_the_best_and_trains_less(results):
    policies = results["consistent"]["policies"]
    assert policies["asha"]["p_thrown_away"] == 0.0
    assert policies["asha"]["compute"] < policies["none"]["compute"]
    assert results["consistent"]["rank_agreement"]["1"]["rho"] > 0.9


def test_when_the_best_is_worst_at_the_first_rung_asha_throws_it_away(results):
    late = results["late_bloomer"]
    assert late["policies"]["asha"]["p_thrown_away"] > 0.0
    assert late["policies"]["asha"]["p_best_proposed"] > 0.0
    assert late["rank_agreement"]["1"]["rho"] < late["rank_agreement"]["4"]["rho"]


def test_a_deterministic_policy_and_table_give_the_same_champion_every_time(tmp_path):
    path = tmp_path / "exact.json"
    save_table(synthetic_table(16, "consistent", noise=0.0), path)
    replay = Replay(load_table(path))
    outcomes = {replay.run("asha", seed=3, order=0, workers=2) for _ in range(3)}
    outcomes |= {Replay(load_table(path)).run("asha", seed=3, order=0, workers=2)}
    assert len(outcomes) == 1
    # another arrival order may change the order of results, and is drawn from its own seed
    assert Replay(load_table(path)).run("asha", seed=3, order=1, workers=2).trials == 12


def test_intervals_hold_their_estimates(results):
    for result in results.values():
        for p in result["policies"].values():
            for key in ("p_thrown_away", "success", "compute"):
                lo, hi = p[f"{key}_ci"]
                assert lo - 1e-12 <= p[key] <= hi + 1e-12, (key, p)
            lo, hi = p["regret"]["ci"]
            assert lo - 1e-12 <= p["regret"]["mean"] <= hi + 1e-12
    assert wilson(0, 30)[0] == 0.0 and 0.05 < wilson(0, 30)[1] < 0.15


def test_the_command_prints_one_json_object_and_draws_the_plot(tables, tmp_path):
    plot = tmp_path / "front.png"
    done = subprocess.run([sys.executable, "-m", "spd_tune.replay", "compare", str(tables["late_bloomer"]),
                           "--policies", "none", "asha", "--seeds", "3", "--orders", "2", "--json", "--plot",
                           str(plot), "--jobs", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one object: anything else on stdout would fail here
    assert set(result) >= {"table", "runs_per_policy", "rank_agreement", "policies"}
    assert result["runs_per_policy"] == 6 and set(result["policies"]) == {"none", "asha"}
    for p in result["policies"].values():
        assert {"p_thrown_away", "p_thrown_away_ci", "success", "success_ci", "regret", "compute",
                "compute_ci"} <= set(p)
        assert set(p["regret"]) == {"mean", "ci"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_one_line(tables, tmp_path):
    for args, words in (([str(tmp_path / "missing.json")], "no curve table"),
                        ([str(tables["consistent"]), "--policies", "asah"], "unknown policy 'asah'"),
                        ([str(tables["consistent"]), "--protocol", "raw"], "no protocol 'raw'")):
        done = subprocess.run([sys.executable, "-m", "spd_tune.replay", "compare", *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr


def test_the_shipped_known_answer_table_is_valid():
    """bench/curves/known_answer.json: the recorded table the stopping policy is measured on."""
    path = ROOT / "bench" / "curves" / "known_answer.json"
    assert [p.name for p in path.parent.glob("known_answer.*") if p.is_file()] == ["known_answer.json"]
    assert path.stat().st_size <= 2_000_000
    table = load_table(path)
    assert table.data["space"] == "known_answer" and table.data["git_commit"] and table.data["command"]
    assert table.data["search"]["asha"]["grace_kimg"] == 2
    values = sorted(c["params"]["m"] for c in table.configs)
    assert 2.0 in values and len(values) >= 12
    assert all(len(c["runs"]) >= 2 for c in table.configs)
    Replay(table)  # it replays


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_recording_trains_scores_and_resumes(tmp_path, private_caches):
    out = tmp_path / "curves.json"
    args = [sys.executable, "-m", "spd_tune.replay", "record", "demo", "--out", str(out), "--grid", "m=2.0,2.5",
            "--grid", "T=50", "--grid", "lr=0.002", "--seeds", "1", "--jobs", "2"]
    for item in ("train.data.demo_count=256", "train.batch=16", "train.eval.samples=16", "train.eval.sampler_steps=4",
                 "train.eval.ref_count=32", "search.asha.grace_kimg=0.16", "search.asha.max_kimg=0.32",
                 "search.final.samples=16", "search.final.sampler_steps=4", f"train.data.cache_dir={tmp_path}"):
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=500, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    table = load_table(out)
    assert json.loads(done.stdout.strip().splitlines()[-1])["with_final_scores"] == 2
    run = table.configs[0]["runs"][0]
    assert [p["kimg"] for p in run["points"]] == [0.16, 0.32]
    assert set(run["points"][0]["scores"]) == {"rung", "samples_x2", "raw", "all_steps"}  # K=4 < T
    assert set(run["points"][-1]["scores"]) == {"rung"} and len(run["final"]["values"]) == 2
    assert all(p["seconds"] > 0 for p in run["points"])
    assert table.data["command"].startswith("python -m spd_tune.replay record demo")
    again = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and "recording 0 run(s) of 2" in again.stdout
