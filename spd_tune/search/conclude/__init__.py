"""The search's second half: from Tune's results to the champion, the report and the records, as stages run once
and in order. Each stage is a module that takes the earlier stages' frozen results and returns its own:

    trials.records_of      Tune's results, read once, as trial records (search/trials.py)
    1. finalists           the top trials by rung score, and the baseline
    2. evaluator           the one Ray task that scores a point of a finalist (injected into 3 and 4)
    3. posthoc             each finalist's EMA width and sampler study; the NFE front
    4. final               the final protocol at each finalist's plain (and best post-hoc) point; the order
    5. champion            best/: the winner's checkpoint, model.pt, config.json
    6. summary             champion.json's document, costs, rung trust, the verdict, the table, the fronts
    7. report              report.html (and posthoc/front.png)
    8. record              Optuna's closing writes, champion.json, MLflow; then ``close``: the registration,
                           the parent run's end and the finished mark, in one step a signal does not cut

Only ``conclude`` prints; the stages that run long say their progress through it. Only the record stage writes
to MLflow. A stage imports only the stages before it.
"""

from __future__ import annotations

import contextlib
import functools
import sys

from ...train.driver import best_checkpoint
from ..interrupt import Interrupts
from ..plan import Layout
from ..schedulers import GATE_STATE_FILE, read_gates
from ..space import Space
from ..trials import records_of
from . import champion, final, finalists, posthoc, record, report, summary
from .evaluator import ray_evaluator

__all__ = ["conclude"]


def conclude(space: Space, layout: Layout, results, argv: list[str] | None = None,
             interrupts: Interrupts | None = None) -> int:
    """Pick the champion and conclude: scores with their noise, the baseline, rung trust and costs, printed,
    rendered and recorded; last, in one step that a signal does not cut, the champion's registration and the
    mark that the search has finished. A signal before that step registers nothing, and ``--resume`` concludes
    again from what the post-hoc and final stages kept in Optuna."""
    check = interrupts.check if interrupts is not None else (lambda: None)
    say = functools.partial(print, flush=True)  # the console, handed to the stages that report progress

    records = records_of(results, space.metric, list(space.search.params))  # Tune's results, read once
    chosen = finalists.select(space, records, layout.under_storage, best_checkpoint)
    evaluate = ray_evaluator(space)
    studied = posthoc.run(space, layout.optuna_url, chosen, evaluate, say)
    judged = final.run(space, chosen, studied, final.StudyStore(space, layout.optuna_url), evaluate, say)
    check()
    winner = champion.crown(layout.root, judged, studied.ran, space)
    summed = summary.summarise(space, layout.root, chosen, studied, judged, winner)
    for line in (summed.table, *summed.lines):
        say(line)
    if summed.front is not None:
        say(summary.front_line(space, summed.front))
    rendered = None
    if winner is not None:
        rendered = report.render(space, layout.root, chosen, studied, summed, optuna_url=layout.optuna_url,
                                 argv=argv, gate=read_gates(layout.root / GATE_STATE_FILE))
        say(f"report: {rendered.html}")
    recorded = record.record(space, layout, chosen, studied, judged, summed, rendered)
    if recorded.orphans:
        say(f"closed {recorded.orphans} Optuna trial(s) / MLflow run(s) left open by a killed driver "
            f"(tagged spd_tune.orphaned)")
    check()
    with interrupts.critical() if interrupts is not None else contextlib.nullcontext():
        model = record.close(space, layout, summed, recorded)
    if winner is None:
        print("no trial produced a finite score; nothing registered", file=sys.stderr)
        return 1
    say(f"registered as {model}" if model else "the champion was not registered in MLflow (see the warning "
        f"above); its files are in {winner.best_dir}")
    say(f"compare the trials: python -m spd_tune.ui {layout.root}")
    return 0
