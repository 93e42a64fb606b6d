"""``python -m spd_tune.replay {record | table | compare}``: measure, over many seeds and arrival orders, whether a
search policy keeps the answer.

  record SPACE --out FILE [--grid NAME=V1,V2,...] [--seeds N] [--jobs J] [--set KEY=VALUE ...]
      train a grid of the space's configurations to max_kimg with N training seeds each, scored at every rung and
      at least every 2 kimg by the rung protocol and the candidate protocols, and at the end by the final
      protocol; resumable (run it again with the same arguments)
  table SEARCH_DIR --out FILE
      a finished search's trials as a table (stopped trials' curves are truncated there)
  compare TABLE [--policies ...] [--seeds N] [--orders K] [--workers W] [--json] [--plot PATH]
      replay each policy on the table: p_thrown_away, success, regret and compute, with 95% intervals
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..cli import Parser, run_main


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    p = Parser(prog="python -m spd_tune.replay", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    rec = sub.add_parser("record", help="record a table of learning curves for a space")
    rec.add_argument("space", help="a shipped search space (e.g. known_answer) or a space YAML")
    rec.add_argument("--out", required=True, help="the table's JSON file (resumed when it exists)")
    rec.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                     help="the values of one searched parameter (default: 12 across its range, with the space's own)")
    rec.add_argument("--seeds", type=int, default=2, help="training seeds per configuration (default 2)")
    rec.add_argument("--jobs", type=int, default=2, help="runs trained at once, one CPU thread each (default 2)")
    rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the space")
    tab = sub.add_parser("table", help="a finished search's trials as a table")
    tab.add_argument("search_dir", help="the search's folder (<output>/<space>)")
    tab.add_argument("--out", required=True, help="the table's JSON file")
    cmp_ = sub.add_parser("compare", help="replay stopping policies on a table")
    cmp_.add_argument("table", help="a table (bench/curves/known_answer.json)")
    cmp_.add_argument("--policies", nargs="+", help="policy names (default: all)")
    cmp_.add_argument("--seeds", type=int, default=30, help="searcher seeds (default 30)")
    cmp_.add_argument("--orders", type=int, default=10, help="arrival orders per seed (default 10)")
    cmp_.add_argument("--workers", type=int, default=2, help="trials at once in simulated time (default 2)")
    cmp_.add_argument("--searcher", choices=("tpe", "random"), default="tpe", help="the proposing searcher")
    cmp_.add_argument("--protocol", default="rung", help="the table's score the policies stop on (default rung)")
    cmp_.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    cmp_.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cmp_.add_argument("--plot", help="draw regret and success against compute per policy to this PNG")
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "spd_tune.replay", *argv])
    if args.command == "record":
        return run_main(lambda: _record(args, command))
    if args.command == "table":
        return run_main(lambda: _table(args, command))
    return run_main(lambda: _compare(args))


def _record(args, command: str) -> int:
    # each subcommand imports what it runs: record needs the training loop, compare Ray's schedulers and Optuna
    from ..errors import ConfigError
    from ..search.space import load_space
    from .record import default_grid, parse_grid, record

    if args.seeds < 1 or args.jobs < 1:
        raise ConfigError("--seeds and --jobs must be >= 1")
    space = load_space(args.space, args.set)
    grid = parse_grid(space, args.grid) if args.grid else default_grid(space)
    table = record(space, grid, args.seeds, Path(args.out), args.jobs, command)
    print(json.dumps(table.summary()))
    return 0


def _table(args, command: str) -> int:
    from .convert import table_of_search  # a finished search's Tune results (Ray Tune): only this subcommand reads them

    table = table_of_search(Path(args.search_dir), Path(args.out), command)
    print(json.dumps(table.summary()))
    return 0


def _compare(args) -> int:
    from .measure import compare, print_comparison  # Ray's schedulers and Optuna: only this subcommand runs them

    result = compare(args.table, policies=args.policies, seeds=args.seeds, orders=args.orders,
                     workers=args.workers, searcher=args.searcher, protocol=args.protocol, jobs=args.jobs,
                     plot=args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        print_comparison(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
