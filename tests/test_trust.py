"""Rung trust's statistics and the final protocol's seed sets: exact against scipy and by construction."""

import math
import random

import pytest
from scipy import stats

from spd_tune.errors import ConfigError
from spd_tune.search.correlation import spearman
from spd_tune.search.results import seed_set_result, versus
from spd_tune.search.space import load_space, seed_ranges
from spd_tune.search.trust import trust_warnings


@pytest.mark.parametrize("n, ties", [(2, False), (5, False), (9, True), (30, True)])
def test_spearman_matches_scipy(n, ties):
    rng = random.Random(n)
    x = [rng.randint(0, 4) if ties else rng.random() for _ in range(n)]
    y = [v + rng.gauss(0, 0.5) for v in x]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_undefined_correlations_are_nan():
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))


def test_trust_warns_below_the_threshold_and_on_few_pairs():
    trust = {"trust_kimg1_final": {"rho": 0.9, "pairs": 6, "rung": 1.0, "against": "final"},
             "trust_kimg2_final": {"rho": 0.9, "pairs": 2, "rung": 2.0, "against": "final"},
             "trust_kimg1_kimg2": {"rho": 0.1, "pairs": 8, "rung": 1.0, "against": "kimg 2"}}
    (line,) = trust_warnings(trust)
    assert "kimg 2 vs final: rho 0.90 over 2 pair(s)" in line and "kimg 1 vs kimg 2: rho 0.10" in line
    assert "kimg 1 vs final" not in line and "grace_kimg" in line
    assert trust_warnings({"trust_kimg1_final": trust["trust_kimg1_final"]}) == []


def test_seed_set_result_and_the_comparison_rule():
    r = seed_set_result([3.0, 4.0, 5.0])
    assert r == {"mean": 4.0, "std": 1.0, "values": [3.0, 4.0, 5.0]}
    assert math.isnan(seed_set_result([1.0, math.nan])["mean"])
    base = seed_set_result([5.0, 5.2, 4.8])
    far, near = versus(seed_set_result([3.0, 3.1, 2.9]), base), versus(seed_set_result([4.9, 5.1, 4.7]), base)
    assert far["significant"] and far["delta"] == pytest.approx(-2.0)
    assert not near["significant"] and near["se"] == pytest.approx(math.sqrt(2 * 0.04 / 3))


def test_final_seed_sets_are_disjoint_reproducible_and_apart_from_rung_and_posthoc_seeds():
    space = load_space("demo")
    f = space.search.final
    sets = f.seed_sets()
    assert sets == load_space("demo").search.final.seed_sets() and len(sets) == f.seeds == 2
    ranges = [range(s, s + f.samples) for s in sets]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(ranges) for b in ranges[i + 1:])
    used = seed_ranges(space)
    assert set(range(sets[0], sets[-1] + f.samples)) == set(used["search.final"])
    assert set(used["search.final"]).isdisjoint(used["train.eval"])
    assert set(used["search.final"]).isdisjoint(used["search.posthoc"])
    # a third set that would run into the rung seeds is refused before Ray starts
    with pytest.raises(ConfigError, match="reuses seeds of train.eval"):
        load_space("demo", ["search.final.seed=999000", "search.final.seeds=8", "search.final.samples=256"])
    with pytest.raises(ConfigError, match="search.final.seeds=0"):
        load_space("demo", ["search.final.seeds=0"])
