"""The replay's figures for docs/method.md: every policy on the known-answer table with the default flags, the
gate's settings swept, rank agreement per recorded protocol, and gated against ASHA on a synthetic table of 64
configurations whose rungs agree (with the anchors' spacing once every gate is open swept there).

    python bench/replay_policies.py [--table bench/curves/known_answer.json] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from spd_tune.replay.measure import compare, print_comparison
from spd_tune.replay.synthetic import synthetic_table
from spd_tune.replay.table import load_table, save_table

SWEEP = [{"anchor_every": a, "threshold": t} for a in (2, 3, 4) for t in (0.0, 0.3, 0.5)]


def with_gate(table_path: Path, gate: dict, folder: Path) -> Path:
    table = load_table(table_path)
    data = copy.deepcopy(table.data)
    data["search"]["gate"] = {**(data["search"].get("gate") or {}), **gate}
    out = folder / f"gate_{gate['anchor_every']}_{gate['threshold']}.json"
    save_table(type(table)(data), out)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--table", default="bench/curves/known_answer.json")
    p.add_argument("--out", default=None)
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--orders", type=int, default=10)
    args = p.parse_args()
    out: dict = {}
    started = time.perf_counter()
    out["default"] = compare(args.table, seeds=args.seeds, orders=args.orders)
    out["default_seconds"] = time.perf_counter() - started
    print_comparison(out["default"])
    print(f"(the default comparison took {out['default_seconds']:.0f} s)")
    table = load_table(args.table)
    out["rank_agreement_by_protocol"] = {p: table.rank_agreement(p) for p in table.protocols()}
    print(json.dumps(out["rank_agreement_by_protocol"], indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        out["gate_sweep"] = []
        for gate in SWEEP:
            r = compare(str(with_gate(Path(args.table), gate, Path(tmp))), policies=["gated"], seeds=args.seeds,
                        orders=args.orders)
            row = {**gate, **{k: r["policies"]["gated"][k] for k in ("p_thrown_away", "success", "compute")},
                   "regret": r["policies"]["gated"]["regret"]["mean"]}
            out["gate_sweep"].append(row)
            print(row)
        for protocol in table.protocols():
            if protocol != "rung":
                r = compare(args.table, policies=["asha", "gated"], seeds=args.seeds, orders=args.orders,
                            protocol=protocol)
                out[f"protocol_{protocol}"] = r
                print_comparison(r)
        synthetic = Path(tmp) / "synthetic64.json"
        save_table(synthetic_table(64, "consistent", trials=32), synthetic)
        out["synthetic64"] = compare(str(synthetic), policies=["none", "asha", "gated"], seeds=args.seeds,
                                     orders=args.orders)
        print_comparison(out["synthetic64"])
        out["synthetic64_anchor_every_open"] = []
        for spacing in (3, 6, 9, 1000):  # 3: never thinner; 1000: no anchor once every gate is open
            data = copy.deepcopy(load_table(synthetic).data)
            data["search"]["gate"] = {"anchor_every_open": spacing}
            path = Path(tmp) / f"synthetic64_open{spacing}.json"
            save_table(type(table)(data), path)
            r = compare(str(path), policies=["asha", "gated"], seeds=args.seeds, orders=args.orders)
            row = {"anchor_every_open": spacing, "asha_compute": r["policies"]["asha"]["compute"],
                   **{k: r["policies"]["gated"][k] for k in ("p_thrown_away", "success", "compute")},
                   "regret": r["policies"]["gated"]["regret"]["mean"]}
            out["synthetic64_anchor_every_open"].append(row)
            print(row)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
