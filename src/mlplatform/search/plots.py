"""The search's plots: optimisation history and hyperparameter importances."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mlplatform.search import space as search_space

log = logging.getLogger(__name__)


def search_plots(study: optuna.Study, best_family: str, folder: Path) -> list[Path]:
    """Optimisation history and hyperparameter importances (within the best family).

    Intermediate values are on each trial's run as step metrics (MLflow charts them).
    """
    from optuna.visualization import matplotlib as ovm

    from mlplatform.evaluation.plots import save_figure

    out: list[Path] = []

    def save(ax: Any, name: str) -> None:
        fig = ax.figure
        fig.set_size_inches(9, 5)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.12)
        out.append(save_figure(fig, folder / name, dpi=72, tight=False))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(ovm.plot_optimization_history(study), "optimization_history.png")
        family_trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.params.get(search_space.FAMILY_PARAM) == best_family
        ]
        names = sorted({k for t in family_trials for k in t.params} - {search_space.FAMILY_PARAM})
        if len(family_trials) >= 2 and names:
            from optuna.importance import PedAnovaImportanceEvaluator

            sub = optuna.create_study(direction=study.direction)
            sub.add_trials(family_trials)
            try:
                ax = ovm.plot_param_importances(
                    sub, evaluator=PedAnovaImportanceEvaluator(), params=names
                )
                ax.set_title(f"Hyperparameter importances ({best_family})")
                save(ax, "param_importances.png")
            except (ValueError, RuntimeError) as exc:
                log.warning("parameter importances not plotted: %s", exc)
    return out
