"""Synthetic curve tables whose answer is known by construction: the replay's tests, and the check that a policy
costs no more than ASHA where rungs can be trusted.

One parameter ``x`` in [0, 1] on an even grid; the final score of x is 1 + 10 (x - x_best)^2. A run's score at
kimg k is its final score plus a transient that decays as 1/k:
- ``consistent``: the same transient for every configuration, so every rung ranks them as the end does;
- ``late_bloomer``: the best configuration's transient is the largest, so it is the worst at the first rung
  and the best from the last rung on (the known-answer data's pattern).
"""

from __future__ import annotations

import numpy as np

from .table import FORMAT, Table


def synthetic_table(configs: int = 16, kind: str = "consistent", seeds: int = 2, trials: int = 12,
                    grace: float = 1.0, reduction_factor: float = 2.0, max_kimg: float = 4.0, x_best: float = 0.6,
                    noise: float = 0.01, top_k: int = 2, startup_trials: int = 2, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    rungs, k = [], grace
    while k < max_kimg - 1e-9:
        rungs.append(k)
        k *= reduction_factor
    rungs.append(max_kimg)
    xs = np.round(np.linspace(0.0, 1.0, configs), 6)
    best = int(np.argmin(np.abs(xs - x_best)))
    rows = []
    for i, x in enumerate(xs):
        final = 1.0 + 10.0 * (x - xs[best]) ** 2
        transient = 4.0 if kind == "consistent" else (30.0 if i == best else 4.0 + 2.0 * abs(x - xs[best]))
        runs = []
        for s in range(seeds):
            points, previous = [], 0.0
            for kimg in rungs:
                score = final + transient * (1.0 / kimg - 1.0 / max_kimg) + rng.normal(0.0, noise)
                points.append({"kimg": kimg, "seconds": 10.0 * (kimg - previous), "scores": {"rung": float(score)}})
                previous = kimg
            values = [float(final + rng.normal(0.0, noise)) for _ in range(2)]
            runs.append({"seed": s, "points": points, "final": {"values": values, "seconds": 1.0}})
        rows.append({"key": f"x={x:.6g}", "params": {"x": float(x)}, "runs": runs})
    search = {"trials": trials, "seed": 0, "startup_trials": startup_trials, "enqueue_defaults": True,
              "params": {"x": {"path": "process.m", "type": "float", "low": 0.0, "high": 1.0, "log": False,
                               "choices": None}},
              "asha": {"grace_kimg": grace, "reduction_factor": reduction_factor, "max_kimg": max_kimg},
              "final": {"top_k": top_k, "samples": 16, "seeds": 2}}
    return Table({"format": FORMAT, "space": f"synthetic_{kind}", "metric": "score", "max_kimg": max_kimg,
                  "rungs": rungs, "points": rungs, "search": search, "default_point": {"x": 0.0},
                  "protocols": [{"name": "rung"}], "final": {"samples": 16, "seed_sets": [0, 1]},
                  "command": "synthetic", "git_commit": None, "machine": {}, "configs": rows})
