"""``compare``: every policy replayed over seeds x arrival orders on one table, and what that measures.

Per policy:
- ``p_thrown_away``: the share of replays in which the table's best configuration was proposed and every trial of
  it was stopped before ``max_kimg``;
- ``success``: the share whose champion's final score is at most the best configuration's mean plus two standard
  errors of the difference (from the table's training seeds and seed sets);
- ``regret``: the champion's final score minus the best configuration's mean;
- ``compute``: kimg trained relative to training every proposed trial to ``max_kimg``.

Intervals are 95%. The replays of one searcher seed share its proposals, so they are not independent: the
intervals of ``regret`` and ``compute`` come from a bootstrap that resamples seeds (with all their arrival orders),
and those of the two shares are Wilson score intervals that count one observation per seed (conservative).
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .policies import BUILDERS, POLICIES
from .simulate import Outcome, Replay
from .table import load_table

BOOTSTRAP = 2000
Z95 = 1.959964


def _replays(args: tuple) -> list[dict]:
    table_path, protocol, policy, seed, orders, workers, searcher = args
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    replay = Replay(load_table(table_path), protocol)
    return [asdict(replay.run(policy, seed, order, workers, searcher)) for order in range(orders)]


def wilson(successes: float, n: int) -> list[float]:
    """The Wilson score interval of a share (95%)."""
    if n <= 0:
        return [math.nan, math.nan]
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def cluster_bootstrap(groups: list[list[float]], seed: int = 0) -> list[float]:
    """95% percentile interval of the overall mean, resampling whole groups (a searcher seed's replays)."""
    rng = np.random.default_rng(seed)
    sums = np.array([sum(g) for g in groups])
    counts = np.array([len(g) for g in groups])
    picks = rng.integers(0, len(groups), size=(BOOTSTRAP, len(groups)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarise(by_seed: list[list[dict]]) -> dict:
    runs = [o for group in by_seed for o in group]
    n_seeds = len(by_seed)
    out = {}
    for name, key in (("p_thrown_away", "thrown_away"), ("success", "success")):
        share = float(np.mean([o[key] for o in runs]))
        out[name] = share
        out[f"{name}_ci"] = wilson(share * n_seeds, n_seeds)
    regret = [[o["regret"] for o in g] for g in by_seed]
    out["regret"] = {"mean": float(np.mean([o["regret"] for o in runs])), "ci": cluster_bootstrap(regret)}
    compute = [[o["compute"] for o in g] for g in by_seed]
    out["compute"] = float(np.mean([o["compute"] for o in runs]))
    out["compute_ci"] = cluster_bootstrap(compute)
    out["p_best_proposed"] = float(np.mean([o["proposed_best"] for o in runs]))
    champions: dict[str, int] = {}
    for o in runs:
        champions[o["champion"]] = champions.get(o["champion"], 0) + 1
    out["champions"] = dict(sorted(champions.items(), key=lambda kv: -kv[1]))
    return out


def compare(table_path: str, policies: list[str] | None = None, seeds: int = 30, orders: int = 10,
            workers: int = 2, searcher: str = "tpe", protocol: str = "rung", jobs: int = 2,
            plot: str | None = None) -> dict:
    table = load_table(table_path)
    names = list(policies or POLICIES)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ConfigError(f"unknown policy {unknown[0]!r}; known: {', '.join(BUILDERS)}")
    if seeds < 1 or orders < 1 or workers < 1:
        raise ConfigError("--seeds, --orders and --workers must be >= 1")
    if protocol not in table.protocols():
        raise ConfigError(f"the table has no protocol {protocol!r}; it has {table.protocols()}")
    Replay(table, protocol)  # a table that cannot be replayed fails here, once
    tasks = [(str(table_path), protocol, name, seed, orders, workers, searcher) for name in names
             for seed in range(seeds)]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_replays, tasks, chunksize=max(1, len(tasks) // (4 * jobs))))
    else:
        results = [_replays(t) for t in tasks]
    out_policies = {}
    for i, name in enumerate(names):
        out_policies[name] = summarise(results[i * seeds:(i + 1) * seeds])
    best = table.best()
    result = {"table": str(table_path), "runs_per_policy": seeds * orders, "workers": workers, "searcher": searcher,
              "protocol": protocol, "best": {"config": best["key"], "mean": best["mean"], "se": best["se"]},
              "rank_agreement": table.rank_agreement(protocol), "policies": out_policies}
    if plot:
        draw(result, Path(plot))
    return result


def print_comparison(result: dict) -> None:
    best = result["best"]
    print(f"table {result['table']}: best configuration {best['config']} at {best['mean']:.4f} ± {best['se']:.4f} "
          f"(standard error); {result['runs_per_policy']} replays per policy, {result['workers']} workers, "
          f"{result['searcher']} searcher, scores: {result['protocol']}")
    print("rank agreement with the final scores (Spearman's rho over every configuration): " + ", ".join(
        f"{k} kimg {v['rho']:+.2f} (n={v['n']})" for k, v in result["rank_agreement"].items()))
    print(f"{'policy':<16}{'thrown away':>22}{'success':>22}{'regret':>28}{'compute':>22}")
    for name, p in result["policies"].items():
        def share(key):
            lo, hi = p[f"{key}_ci"]
            return f"{p[key]:.3f} [{lo:.3f}, {hi:.3f}]"
        lo, hi = p["regret"]["ci"]
        clo, chi = p["compute_ci"]
        print(f"{name:<16}{share('p_thrown_away'):>22}{share('success'):>22}"
              f"{p['regret']['mean']:>12.4f} [{lo:.4f}, {hi:.4f}]{p['compute']:>8.3f} [{clo:.3f}, {chi:.3f}]")


def draw(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, p in result["policies"].items():
        x, (xlo, xhi) = p["compute"], p["compute_ci"]
        y, (ylo, yhi) = p["regret"]["mean"], p["regret"]["ci"]
        ax1.errorbar(x, y, xerr=[[x - xlo], [xhi - x]], yerr=[[y - ylo], [yhi - y]], fmt="o", capsize=3, label=name)
        s, (slo, shi) = p["success"], p["success_ci"]
        ax2.errorbar(x, s, xerr=[[x - xlo], [xhi - x]], yerr=[[s - slo], [shi - s]], fmt="o", capsize=3, label=name)
    ax1.set(xlabel="compute (kimg trained / all trials to max_kimg)", ylabel=f"regret ({result['best']['config']})",
            title="regret against compute (95% intervals)")
    ax2.set(xlabel="compute", ylabel="success (share of replays)", title="success against compute", ylim=(-0.02, 1.02))
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["Outcome", "compare", "print_comparison", "summarise", "wilson", "cluster_bootstrap"]
