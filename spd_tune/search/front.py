"""The score-against-NFE front: the points no other point beats in both score and sampling cost.

From the post-hoc evaluations of every finalist it is the FID-against-NFE trade-off of the paper's T sweep, got
from one training per configuration instead of one per T.
"""

from __future__ import annotations

import math
from pathlib import Path

MARKERS = ("o", "^", "s", "D")
PLAIN_TICKS = (1, 2, 5, 10, 20, 40, 100, 200, 400, 1000, 2000, 4000)


def nondominated(points: list[dict], metric: str) -> list[dict]:
    """The points with a finite ``metric`` that no other beats in both ``metric`` and ``nfe``, by NFE."""
    finite = [p for p in points if isinstance(p.get(metric), (int, float)) and math.isfinite(p[metric])]
    front = [p for p in finite if not any(
        q[metric] <= p[metric] and q["nfe"] <= p["nfe"] and (q[metric] < p[metric] or q["nfe"] < p["nfe"])
        for q in finite)]
    return sorted(front, key=lambda p: (p["nfe"], p[metric]))


def with_posthoc(trial_front: list[dict], posthoc_front: list[dict], metric: str) -> list[dict]:
    """Multi-objective mode: the trials' front and the post-hoc front as one, each point labelled with the
    ``stage`` it comes from (``asha``: a trial at its own sampler, NFE = T; ``posthoc``: a finalist's weights at
    a post-hoc point). Both are scored with the rung protocol's samples and seeds, so they compare."""
    points = [{**p, "stage": "asha"} for p in trial_front] + [{**p, "stage": "posthoc"} for p in posthoc_front]
    return nondominated(points, metric)


def posthoc_points(studies: dict[str, list[dict]], metric: str) -> list[dict]:
    """Every post-hoc evaluation of every finalist as {trial_id, posthoc_trial, <metric>, nfe, point}."""
    return [{"trial_id": trial_id, "posthoc_trial": row["trial"], metric: row.get("score", math.nan),
             "nfe": int(row.get("nfe", row["point"]["steps"])), "point": row["point"]}
            for trial_id, rows in studies.items() for row in rows]


def plot_front(points: list[dict], front: list[dict], metric: str, path: Path) -> Path | None:
    """All evaluations, one colour per finalist, with the front drawn through them; None if nothing is finite."""
    finite = [p for p in points if math.isfinite(p[metric])]
    if not finite:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {t: f"C{i}" for i, t in enumerate(sorted({p["trial_id"] for p in finite}))}
    samplers = sorted({p["point"]["sampler"] for p in finite})
    for trial_id, colour in colours.items():  # colour: the finalist; marker: the sampler
        for j, sampler in enumerate(samplers):
            mine = [p for p in finite if p["trial_id"] == trial_id and p["point"]["sampler"] == sampler]
            if mine:
                ax.scatter([p["nfe"] for p in mine], [p[metric] for p in mine], s=26, alpha=0.8, color=colour,
                           marker=MARKERS[j % len(MARKERS)], label=f"trial {trial_id}, {sampler}")
    ax.step([p["nfe"] for p in front], [p[metric] for p in front], where="post", color="black", lw=1.2,
            label="front")
    ax.set_xscale("log")
    low, high = min(p["nfe"] for p in finite), max(p["nfe"] for p in finite)
    ticks = [t for t in PLAIN_TICKS if low / 1.5 <= t <= high * 1.5] or [low, high]
    ax.set_xticks(ticks, [str(t) for t in ticks])  # 5, 10, 20, 40, not 6x10^0
    ax.minorticks_off()
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(metric)
    ax.set_title(f"post-hoc evaluations: {metric} against sampling cost")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
