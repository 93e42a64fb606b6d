"""Stage 7, report: one self-contained report of a finished search, ``<output>/<space>/report.html`` (the record
stage logs it on the parent MLflow run), and the post-hoc front's plot ``posthoc/front.png``.

It renders what the summary stage computed: the trial table, the metric curves, rung trust, the
score-against-NFE front, parameter importances, the champion's and the baseline's samples, the costs and the lines
that reproduce the champion. Every figure is a PNG embedded as a data URI; nothing points to the network, so the
file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from ..fit import describe_fit
from ..front import plot_front
from ..results import final_metric_name
from ..space import Space
from ..trials import TrialRecord
from ..trust import rung_table
from .champion import CHAMPION_GRID, DATA_GRID
from .finalists import Finalists
from .posthoc import PosthocResult
from .summary import FRONT_FILE, Summary

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Rendered:
    html: Path
    front_png: Path | None  # the post-hoc evaluations against NFE, when the stage ran


def render(space: Space, root: Path, finalists: Finalists, posthoc: PosthocResult, summary: Summary, *,
           optuna_url: str, argv: list[str] | None, gate: dict | None) -> Rendered:
    """report.html and, after a post-hoc stage, posthoc/front.png, under the search's folder ``root``."""
    front_png = None
    if posthoc.ran:
        (root / FRONT_FILE).parent.mkdir(parents=True, exist_ok=True)
        front_png = plot_front(list(posthoc.points), list(posthoc.front), space.metric,
                               (root / FRONT_FILE).with_suffix(".png"))
    page = write_report(root / REPORT_FILE, space, list(finalists.records), dict(summary.document),
                        lines=list(summary.lines), costs=summary.costs, spent=summary.spent, trust=summary.trust,
                        plain=dict(summary.plain), optuna_url=optuna_url, argv=argv, front_png=front_png, gate=gate,
                        spectrum=space.fit)
    return Rendered(page, front_png)

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}.pair{display:flex;gap:1em}.warn{color:#a33}
.pair figure{margin:0;flex:1}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.few{opacity:.45}.few-note{color:#a33;font-style:italic}"""
MIN_TRIALS_TO_READ = 5  # below it, correlations and importances are shown greyed out: too few trials to read


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return _img(buffer.getvalue())


def _img(png: bytes, alt: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return html.escape(str(value))


def trial_table(space: Space, records: list[TrialRecord], info: dict, costs: dict[str, dict], unit: str) -> str:
    rungs = space.rungs()
    table = rung_table(space, records)
    finals = {f["trial_id"]: f for f in (info.get("finalists") or [info])}
    params = list(space.search.params)
    head = (["trial", *params] + [f"kimg {r:g}" for r in rungs]
            + [f"final {space.metric} (mean ± std)", "state", f"cost ({unit}-hours)"])
    rows = []
    for record in records:
        trial_id = record.trial_id or "?"
        f = finals.get(trial_id)
        final = f"{f['final']['mean']:.4f} ± {f['final']['std']:.4f}" if f and f.get("final") else ""
        if f and f.get("baseline"):
            final += " (baseline)"
        state = result_state(space, record)
        if trial_id == info.get("trial_id"):
            state += ", champion"
        cells = [trial_id, *[_fmt(record.params.get(p)) for p in params],
                 *[_fmt(table.get(trial_id, {}).get(r, math.nan)) for r in rungs], final, state,
                 _fmt(costs.get(trial_id, {}).get("hours", math.nan), 3)]
        rows.append((record.best_score if record.finite_reports else math.inf, cells))
    rows = [cells for _, cells in sorted(rows, key=lambda row: (math.isnan(row[0]), row[0], row[1][0]))]  # by score
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for cells in rows:
        out.append("<tr>" + "".join(f'<td{" class=l" if i == 0 else ""}>{html.escape(str(c))}</td>'
                                    for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(out + ["</table>"])


def result_state(space: Space, record: TrialRecord) -> str:
    state = record.state(space.max_kimg)
    return f"stopped at {record.kimg:g} kimg" if state == "stopped" else state


def curves_figure(space: Space, records: list[TrialRecord]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for record in records:
        points = [(r.kimg, r.score) for r in record.finite_reports]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, lw=1, label=record.trial_id)
    for rung in space.rungs():
        ax.axvline(rung, color="#bbb", lw=0.8, ls=":")
    ax.set_xlabel("kimg (dotted: ASHA rungs)")
    ax.set_ylabel(space.metric)
    ax.set_title(f"{space.metric} at each evaluation")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def trust_figure(space: Space, records: list[TrialRecord], plain: dict[str, float]) -> str | None:
    table = rung_table(space, records)
    rungs = space.rungs()
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(rungs), figsize=(3.6 * len(rungs), 3.2), squeeze=False, constrained_layout=True)
    for ax, rung in zip(axes[0], rungs):
        ids = [t for t in plain if rung in table.get(t, {})]
        ax.scatter([table[t][rung] for t in ids], [plain[t] for t in ids], s=18)
        for t in ids:
            ax.annotate(t, (table[t][rung], plain[t]), fontsize=6)
        ax.set_xlabel(f"{space.metric} at kimg {rung:g}")
        ax.set_ylabel(f"final {space.metric} (plain point)")
    fig.suptitle("rung scores against final scores (finalists)", fontsize=10)
    return _png(fig)


def importance_figure(space: Space, optuna_url: str) -> str | None:
    import optuna

    study = optuna.load_study(study_name=space.train.name, storage=optuna_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2 or len(study.directions) > 1:
        return None
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every parameter constant over the completed trials
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(importances) + 1))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance for {space.metric} (fANOVA, {len(done)} completed trials)")
    return _png(fig)


def grid_image(path: Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return f"<figure><figcaption>{html.escape(caption)}: no sample grid on this machine</figcaption></figure>"
    return f"<figure>{_img(Path(path).read_bytes(), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def reproduce(space: Space, info: dict, argv: list[str] | None) -> str:
    params = " ".join(f"--set {shlex.quote(f'{space.search.params[k].path}={v}')}" for k, v in info["params"].items())
    f = space.search.final
    sampling = info.get("sampling") or {}
    sample_flags = "".join(f" --{k} {sampling[k]}" for k in ("sampler", "steps", "eta") if k in sampling)
    search = " ".join(shlex.quote(a) for a in (argv or [space.train.name]))
    lines = [f"# the search: python -m spd_tune.search {search}",
             f"# the champion's training (seed {space.train.seed}):",
             f"python -m spd_tune.train {shlex.quote(space.train.name)} {params}",
             "# its samples and score with the final protocol's seed sets:"]
    data = space.train.data
    data_dir = f" --data-dir {shlex.quote(data.root)}" if data.root else ""
    proxy = "" if space.train.eval.features.weights == "pytorch-fid" else " --proxy"
    for s, seed in enumerate(f.seed_sets()):
        lines.append(f"python -m spd_tune.sample {info['best_dir']}/model.pt --n {f.samples} --seed {seed}"
                     f"{sample_flags} --out set{s}.npz")
        lines.append(f"python -m spd_tune.fid score set{s}.npz --ref {shlex.quote(data.name)}{data_dir}{proxy}")
    return html.escape("\n".join(lines))


def trust_label(name: str, t: dict) -> str:
    """A rung-trust row in words: which rung's scores against which later scores."""
    against = "the final scores (plain point)" if t["against"] == "final" else f"the scores at {t['against']}"
    return f"rung at {t['rung']:g} kimg against {against}"


def too_few(records: list, part: str) -> str:
    """``part`` greyed out under a note when the search has too few trials for it to be read as evidence."""
    if len(records) >= MIN_TRIALS_TO_READ:
        return part
    return (f"<p class=few-note>too few trials ({len(records)} < {MIN_TRIALS_TO_READ}): shown for completeness, "
            f"not to be read as evidence</p><div class=few>{part}</div>")


def spectrum_section(record: dict) -> str:
    """The training data's spectrum fit that centred the search: every estimator and band, the ranges, and the
    misfit line when a single power law fits the data poorly."""
    fit = record["fit"]
    rows = ["<h2>The data's spectrum</h2><ul>"]
    rows += [f"<li>{html.escape(line.strip())}</li>" for line in describe_fit(record)]
    rows += ["</ul><table><tr><th class=l>estimator and band</th><th>m</th><th>95% interval</th></tr>"]
    for name, e in fit.get("estimators", {}).items():
        ci = f"[{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e.get("ci") else ""
        rows.append(f"<tr><td class=l>{html.escape(name)}</td><td>{e['m']:.3f}</td><td>{ci}</td></tr>")
    rows.append("</table>")
    if fit.get("misfit"):
        rows.append(f"<p class=warn>{html.escape(fit['misfit_reason'])}</p>")
    return "".join(rows)


def gate_section(gate: dict) -> str:
    """The stopping gate as the search ended: per rung, whether it could stop trials and on what measurement; the
    anchors; the trials the gate let through and those it stopped."""
    rows = ["<h2>Early-stopping gate</h2><p>A rung stops trials only once the lower 95% bound of Spearman's rho "
            f"between its scores and those at the highest kimg reached exceeds {gate['threshold']:g}.</p><table>"
            "<tr><th class=l>rung (kimg)</th><th class=l>state</th><th>rho</th><th>lower bound</th><th>pairs</th>"
            "<th>compared with (kimg)</th></tr>"]
    for rung, g in gate["gates"].items():
        rows.append(f"<tr><td class=l>{html.escape(rung)}</td><td class=l>{'open' if g['open'] else 'closed'}</td>"
                    f"<td>{_fmt(g.get('rho'), 3)}</td><td>{_fmt(g.get('lower'), 3)}</td><td>{g['pairs']}</td>"
                    f"<td>{_fmt(g.get('against'))}</td></tr>")
    rows.append("</table>")
    closed_now = {t: m for t, m in gate["stopped"].items() if not gate["gates"].get(f"{m:g}", {}).get("open")}
    items = [f"anchors (run to the end whatever the rungs said): {', '.join(gate['anchors']) or 'none'}",
             "let through by a closed gate or as anchors, where ASHA would have stopped them: " + (", ".join(
                 f"{t} ({m:g} kimg)" for t, m in sorted(gate["let_through"].items())) or "none"),
             "stopped by an open gate: " + (", ".join(f"{t} ({m:g} kimg)" for t, m in sorted(gate["stopped"].items()))
                                            or "none")]
    if closed_now:
        items.append("stopped while their rung's gate was open, which has closed since (their PRUNED state in "
                     "Optuna stands): " + ", ".join(f"{t} ({m:g} kimg)" for t, m in sorted(closed_now.items())))
    return "\n".join(rows) + "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def samples_section(space: Space, info: dict, champion_grid: Path | None, baseline: dict | None,
                  baseline_grid: Path | None) -> list[str]:
    """The champion's samples with its judged sampler beside training images, then the rung checkpoints'."""
    best = Path(info["best_dir"]) if info.get("best_dir") else None
    sampling = info.get("sampling") or {}
    how = (f"{sampling['sampler']}, {sampling['steps']} steps" if sampling else
           f"{space.train.eval.sampler}, the rung protocol's sampler")
    return ["<h2>Samples</h2><p>The champion's weights with the sampler it was judged at, beside training images; "
            "the champion's and the baseline's rung checkpoints with the rung protocol's sampler.</p>"
            "<div class=pair>",
            grid_image(best / CHAMPION_GRID if best else None, f"champion, trial {info['trial_id']} ({how})"),
            grid_image(best / DATA_GRID if best else None, "training images"), "</div><div class=pair>",
            grid_image(champion_grid, f"champion's rung checkpoint, trial {info['trial_id']}"),
            grid_image(baseline_grid, f"baseline, trial {baseline['trial_id']}" if baseline else "baseline: none"),
            "</div>"]


def write_report(path: Path, space: Space, records: list[TrialRecord], info: dict, *, lines: list[str], costs: dict[str, dict],
                 spent: dict, trust: dict, plain: dict[str, float], optuna_url: str, argv: list[str] | None,
                 front_png: Path | None = None, gate: dict | None = None, spectrum: dict | None = None) -> Path:
    """Render the report of a finished search to ``path`` and return it."""
    final_name = final_metric_name(space.metric)
    baseline = next((f for f in (info.get("finalists") or []) if f.get("baseline")), None)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>spd-tune search {html.escape(space.train.name)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>Search {html.escape(space.train.name)}: {len(records)} trials, metric {space.metric}</h1>",
             f"<p>Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Lower is better.</p>",
             "<h2>Result</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>",
             "<h2>Trials</h2>", trial_table(space, records, info, costs, spent["unit"]),
             "<h2>Metric curves</h2>", curves_figure(space, records)]
    if spectrum:
        parts.append(spectrum_section(spectrum))
    if gate:
        parts.append(gate_section(gate))
    if plain:
        table = ["<table><tr><th class=l>rank agreement</th><th>Spearman rho</th><th>pairs</th></tr>"]
        table += [f"<tr><td class=l>{html.escape(trust_label(n, t))}</td><td>{_fmt(t['rho'], 3)}</td>"
                  f"<td>{t['pairs']}</td></tr>" for n, t in trust.items()]
        table += ["</table>", trust_figure(space, records, plain) or ""]
        parts += ["<h2>Rung trust</h2>", too_few(records, "".join(table))]
    if front_png is not None and Path(front_png).is_file():
        parts += ["<h2>Score against NFE (post-hoc evaluations)</h2>", _img(Path(front_png).read_bytes(), "front")]
    importance = importance_figure(space, optuna_url)
    if importance:
        parts += ["<h2>Parameter importances</h2>", too_few(records, importance)]
    champion_grid = Path(info["best_dir"]) / "samples.png" if info.get("best_dir") else None
    baseline_grid = Path(baseline["checkpoint"]) / "samples.png" if baseline and "://" not in str(
        baseline.get("checkpoint", "")) else None
    parts += samples_section(space, info, champion_grid, baseline, baseline_grid)
    u = spent["unit"]
    parts += [f"<h2>Cost ({u}-hours)</h2><table>",
              f"<tr><td class=l>trials' training and rung evaluations</td><td>{spent['train_hours']:.4g}</td></tr>",
              f"<tr><td class=l>post-hoc and final stages</td><td>{spent['stage_hours']:.4g}</td></tr>",
              f"<tr><td class=l>total</td><td>{spent['total_hours']:.4g}</td></tr>",
              f"<tr><td class=l>the same trials without early stopping</td>"
              f"<td>{spent['no_early_stopping_hours']:.4g}</td></tr></table>"]
    config = info.get("best_dir") and Path(info["best_dir"]) / "config.json"
    parts += ["<h2>Reproduce the champion</h2>", f"<pre>{reproduce(space, info, argv)}</pre>",
              f"<p>{final_name} {info.get(final_name, math.nan):.4f} was scored with seed sets "
              f"{space.search.final.seed_sets()} of {space.search.final.samples} samples each.</p>"]
    if config and config.is_file():
        parts += ["<details><summary>the champion's training config (config.json)</summary><pre>"
                  + html.escape(json.dumps(json.loads(config.read_text()), indent=2)) + "</pre></details>"]
    parts.append("<p>Method: Das, Fotiadis et al., Image generation with shortest path diffusion, ICML 2023, "
                 "arXiv:2306.00501.</p></body></html>")
    path.write_text("\n".join(parts))
    return path
