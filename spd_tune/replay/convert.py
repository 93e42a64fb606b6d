"""A finished search as a curve table: each trial one configuration's run, its curve as the search reported it
(a stopped trial's is truncated where it stopped), and final values for the finalists the final protocol scored
(their plain point: the final protocol on the rung EMA). The table's summary says how many trials ran to
``max_kimg`` and how many have final scores; only those count as complete runs in a replay."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..search.space import SPACE_FILE
from ..search.trials import records_of_experiment
from .table import FORMAT, Table, git_commit, machine, save_table


def table_of_search(search_dir: Path, out: Path, command: str) -> Table:
    record_file = search_dir / SPACE_FILE
    if not record_file.is_file():
        raise ConfigError(f"{search_dir} has no {SPACE_FILE}: not a search folder, or one written before searches "
                          "recorded their space")
    space = json.loads(record_file.read_text())
    experiment = search_dir / "ray" / "tune" / space["name"]
    if not experiment.is_dir():
        raise ConfigError(f"no Tune experiment at {experiment}")
    finals = _finals(search_dir)
    metric, params = space["metric"], list(space["search"]["params"])
    table = Table({"format": FORMAT, "space": space["name"], "metric": metric, "max_kimg": space["max_kimg"],
                   "rungs": space["rungs"], "points": space["rungs"], "search": space["search"],
                   "default_point": space["default_point"] if space["search"].get("enqueue_defaults") else None,
                   "protocols": [{"name": "rung", "description": "the search's own rung scores"}],
                   "final": {"samples": space["search"]["final"]["samples"]}, "command": command,
                   "git_commit": git_commit(), "machine": machine(), "source": str(search_dir), "configs": []})
    for record in records_of_experiment(experiment, metric, params):
        if not record.reports:
            continue
        points, previous = [], 0.0
        for report in record.reports:
            points.append({"kimg": report.kimg, "seconds": report.seconds - previous, "scores": {"rung": report.score}})
            previous = report.seconds
        run = {"params": dict(record.params), "seed": 0, "trial_id": record.trial_id, "points": points}
        if record.trial_id in finals:
            run["final"] = {"values": finals[record.trial_id]}
        table.add_run(run)
    save_table(table, out)
    return table


def _finals(search_dir: Path) -> dict[str, list[float]]:
    info = search_dir / "best" / "champion.json"
    if not info.is_file():
        return {}
    champion = json.loads(info.read_text())
    out = {}
    for row in champion.get("finalists") or [champion]:
        scored = row.get("plain", row).get("final")
        if scored and scored.get("values"):
            out[row["trial_id"]] = [float(v) for v in scored["values"]]
    return out
