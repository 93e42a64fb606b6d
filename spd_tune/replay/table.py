"""A table of learning curves: what the replay simulator replays a search policy on.

One JSON file (at most 2 MB): the space's search section as recorded, the command, git commit and machine, the
protocols, and per configuration its runs (one per training seed), each with its evaluation points (kimg, the
segment's seconds, a score per protocol) and, when it ran to ``max_kimg``, its final protocol's values over the
seed sets. What a configuration "is" in the replay is the mean of its runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fsutil import atomic_path
from ..search.correlation import spearman

FORMAT = "spd-tune-curves/1"
MAX_BYTES = 2_000_000


def config_key(params: dict) -> str:
    """A configuration's name in the table and in run folders: its parameters, sorted."""
    return ",".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _finite(value):
    """JSON has no NaN or infinity: a non-finite score (a diverged run) is stored as null, read as missing."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def machine() -> dict:
    return {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or None
    except OSError:
        return None


@dataclass
class Table:
    data: dict

    @property
    def metric(self) -> str:
        return self.data["metric"]

    @property
    def max_kimg(self) -> float:
        return float(self.data["max_kimg"])

    @property
    def configs(self) -> list[dict]:
        return self.data["configs"]

    def has_run(self, params: dict, seed: int) -> bool:
        key = config_key(params)
        return any(c["key"] == key and any(r["seed"] == seed for r in c["runs"]) for c in self.configs)

    def add_run(self, run: dict) -> None:
        key = config_key(run["params"])
        config = next((c for c in self.configs if c["key"] == key), None)
        if config is None:
            config = {"key": key, "params": run["params"], "runs": []}
            self.configs.append(config)
            self.configs.sort(key=lambda c: [c["params"][k] for k in sorted(c["params"])])
        row = _finite({k: v for k, v in run.items() if k != "params"})
        config["runs"] = sorted([r for r in config["runs"] if r["seed"] != run["seed"]] + [row],
                                key=lambda r: r["seed"])

    def complete_runs(self, config: dict) -> list[dict]:
        """The runs that reached max_kimg and have final values."""
        return [r for r in config["runs"] if r.get("final", {}).get("values")
                and r["points"] and r["points"][-1]["kimg"] >= self.max_kimg - 1e-9]

    def final_stats(self) -> list[dict]:
        """Per configuration with complete runs: {key, params, mean, se, runs}. The mean is over its runs of each
        run's mean over seed sets; its standard error combines training seeds and sampling noise (the spread of
        run means over sqrt(runs); with one run, the seed sets' spread over sqrt(sets))."""
        out = []
        for config in self.configs:
            runs = self.complete_runs(config)
            if not runs:
                continue
            means = [float(np.mean([v if v is not None else math.inf for v in r["final"]["values"]])) for r in runs]
            if len(means) > 1:
                se = float(np.std(means, ddof=1) / math.sqrt(len(means)))
            else:
                values = runs[0]["final"]["values"]
                se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
            out.append({"key": config["key"], "params": config["params"], "mean": float(np.mean(means)), "se": se,
                        "runs": len(runs)})
        return out

    def best(self) -> dict:
        stats = [s for s in self.final_stats() if math.isfinite(s["mean"])]
        if not stats:
            raise ConfigError("the table has no configuration with a finite final score")
        return min(stats, key=lambda s: s["mean"])

    def rung_means(self, protocol: str = "rung") -> dict[float, dict[str, float]]:
        """kimg -> {configuration key -> the mean of its runs' scores there}, over complete runs."""
        out: dict[float, dict[str, float]] = {}
        for config in self.configs:
            rows: dict[float, list[float]] = {}
            for run in self.complete_runs(config):
                for point in run["points"]:
                    value = point["scores"].get(protocol)
                    if value is not None and math.isfinite(value):
                        rows.setdefault(round(point["kimg"], 6), []).append(value)
            for kimg, values in rows.items():
                out.setdefault(kimg, {})[config["key"]] = float(np.mean(values))
        return dict(sorted(out.items()))

    def rank_agreement(self, protocol: str = "rung") -> dict:
        """Spearman's rho of each evaluation point's scores against the final scores, over every configuration
        of the table (what a live search, which sees only survivors, cannot measure): {kimg: {rho, n}}."""
        finals = {s["key"]: s["mean"] for s in self.final_stats()}
        out = {}
        for kimg, scores in self.rung_means(protocol).items():
            keys = [k for k in scores if k in finals]
            if len(keys) >= 3:
                rho = spearman([scores[k] for k in keys], [finals[k] for k in keys])
                out[_fmt(kimg)] = {"rho": rho, "n": len(keys)}
        return out

    def protocols(self) -> list[str]:
        return [p["name"] for p in self.data.get("protocols", [{"name": "rung"}])]

    def summary(self) -> dict:
        runs = [r for c in self.configs for r in c["runs"]]
        complete = sum(len(self.complete_runs(c)) for c in self.configs)
        to_end = sum(1 for r in runs if r["points"] and r["points"][-1]["kimg"] >= self.max_kimg - 1e-9)
        return {"configurations": len(self.configs), "runs": len(runs), "ran_to_max_kimg": to_end,
                "with_final_scores": complete}


def finite_or_inf(value) -> float:
    return math.inf if value is None else float(value)


def new_table(space, command: str, points: list[float], protocols: list[dict]) -> Table:
    search = json.loads(json.dumps(dataclasses.asdict(space.search), default=str))
    return Table({"format": FORMAT, "space": space.train.name, "metric": space.metric, "max_kimg": space.max_kimg,
                  "rungs": space.rungs(), "points": points, "search": search,
                  "default_point": space.default_point() if space.search.enqueue_defaults else None,
                  "protocols": protocols,
                  "final": {"samples": space.search.final.samples, "seed_sets": space.search.final.seed_sets()},
                  "command": command, "git_commit": git_commit(), "machine": machine(), "configs": []})


def load_table(path: str | Path) -> Table:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no curve table at {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the curve table {path}: {err}") from None
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a curve table ({FORMAT})")
    return Table(data)


def save_table(table: Table, path: str | Path) -> None:
    text = json.dumps(table.data, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_BYTES:
        raise ConfigError(f"the table would take {len(text.encode())} bytes, more than {MAX_BYTES}")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
