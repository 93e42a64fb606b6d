"""Optuna's own plots of a search's study, as PNG files for the parent MLflow run: the optimisation history, the
parallel coordinates and the parameter importances, or the score-against-NFE front in multi-objective mode."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("spd_tune.optuna_plots")


def optuna_plots(optuna_url: str, study_name: str, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    study = optuna.load_study(study_name=study_name, storage=optuna_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = []
    if len(study.directions) > 1:  # the score against NFE
        plots = [("pareto_front", lambda s: ovm.plot_pareto_front(s, target_names=["score", "nfe"]))]
    else:
        plots = [("history", ovm.plot_optimization_history), ("parallel_coordinates", ovm.plot_parallel_coordinate)]
        if len(done) >= 2:
            plots.append(("param_importances", ovm.plot_param_importances))
    for name, plot in plots:
        try:
            ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out.append(path)
        except Exception as err:  # e.g. too few trials for importances
            log.info("optuna plot %s skipped: %s", name, err)
    return out
