"""The post-hoc study protocol on a real Optuna SQLite study: seeded and order-independent, resumable, in range."""

import math
import random
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest

from spd_tune.search.posthoc import open_study, posthoc_study_name, run_study
from spd_tune.search.space import PosthocConfig

PH = PosthocConfig(enabled=True, evaluations=10, batch=3, k_min=4, k_max=64, sigma_rel=(0.03, 0.2))


def objective(point):
    """A known landscape over the post-hoc parameters (the stage's real scorer is tested in test_posthoc.py)."""
    s = point.sampler
    return {"score": abs(math.log(s.steps / 20)) + (s.eta - 0.3) ** 2 + (math.log((point.sigma_rel or 0.1) / 0.07)) ** 2
            + (0.5 if s.kind == "ancestral" else 0.0), "nfe": s.steps}


def finishing_in_random_order(seed):
    """Evaluate a batch in threads that finish in a shuffled order, as Ray tasks would."""
    rng = random.Random(seed)

    def evaluate(points):
        delays = [rng.random() * 0.05 for _ in points]

        def one(item):
            time.sleep(item[1])
            return objective(item[0])

        with ThreadPoolExecutor(len(points)) as pool:
            return list(pool.map(one, zip(points, delays)))
    return evaluate


def storage(tmp_path):
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_same_seed_gives_the_same_posthoc_trials_whatever_order_evaluations_finish(tmp_path):
    runs = []
    for order_seed in (1, 2):
        study = open_study(storage(tmp_path), posthoc_study_name("demo", f"t{order_seed}"), seed=7)
        runs.append(run_study(study, PH, steps=200, power=True, evaluate=finishing_in_random_order(order_seed)))
    assert len(runs[0]) == PH.evaluations
    assert [r["point"] for r in runs[0]] == [r["point"] for r in runs[1]]
    assert [r["score"] for r in runs[0]] == [r["score"] for r in runs[1]]
    assert [r["trial"] for r in runs[0]] == list(range(PH.evaluations))


def test_points_stay_in_their_ranges(tmp_path):
    study = open_study(storage(tmp_path), "demo/posthoc/a", seed=0)
    results = run_study(study, PH, steps=40, power=True, evaluate=lambda pts: [objective(p) for p in pts])
    for r in results:
        p = r["point"]
        assert 4 <= p["steps"] <= 40  # K <= T even when k_max is above it
        assert p["sampler"] in ("ancestral", "ddim") and (p["eta"] == 0.0 or p["sampler"] == "ddim")
        assert 0.03 <= p["sigma_rel"] <= 0.2
    rate = run_study(open_study(storage(tmp_path), "demo/posthoc/b", seed=0), PH, steps=40, power=False,
                     evaluate=lambda pts: [objective(p) for p in pts])
    assert all(r["point"]["sigma_rel"] is None for r in rate)  # no width to search without power EMA


def test_a_killed_driver_resumes_the_study_without_losing_or_repeating_an_evaluation(tmp_path):
    name = "demo/posthoc/killed"
    evaluated = []

    def dies_in_the_second_batch(points):
        if len(evaluated) >= PH.batch:
            raise KeyboardInterrupt  # the driver is gone between ask and tell
        evaluated.extend(p for p in points)
        return [objective(p) for p in points]

    with pytest.raises(KeyboardInterrupt):
        run_study(open_study(storage(tmp_path), name, seed=3), PH, 200, True, dies_in_the_second_batch)
    study = optuna.load_study(study_name=name, storage=storage(tmp_path))
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == PH.batch  # asked, never told

    def counting(points):
        evaluated.extend(points)
        return [objective(p) for p in points]

    results = run_study(open_study(storage(tmp_path), name, seed=3), PH, 200, True, counting)
    assert [r["trial"] for r in results] == list(range(PH.evaluations))  # every trial told once, none skipped
    assert len(evaluated) == PH.evaluations  # the killed batch was evaluated again once, nothing else twice
    assert [r["point"]["steps"] for r in results[PH.batch: 2 * PH.batch]] == [t.params["steps"] for t in running]
