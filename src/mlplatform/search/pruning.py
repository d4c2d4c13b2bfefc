"""Pruning that compares a trial only with trials of its own model family.

Steps mean different things per family (boosting rounds, trees, one fit), so a percentile
pruner must not compare an XGBoost trial at round 50 with a forest at 50 trees.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner, PercentilePruner
from optuna.trial import FrozenTrial

from mlplatform.config import Params
from mlplatform.search import space as search_space


class _FamilyView:
    """The parts of a Study a pruner reads, restricted to one family's trials."""

    def __init__(self, study: optuna.Study, family: Any) -> None:
        self._study = study
        self._family = family
        self.direction = study.direction
        self.directions = study.directions

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(search_space.FAMILY_PARAM) == self._family]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class FamilyPruner(BasePruner):
    """Delegates to a pruner that only sees trials of the same model family."""

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        family = trial.params.get(search_space.FAMILY_PARAM)
        return self.inner.prune(_FamilyView(study, family), trial)  # type: ignore[arg-type]


def make_pruner(params: Params) -> BasePruner:
    if params.tune.fidelity.active:
        from mlplatform.search.rungs import RungPruner

        return RungPruner(params.tune.fidelity)
    cfg = params.tune.pruner
    if not cfg.enabled:
        return NopPruner()
    return FamilyPruner(
        PercentilePruner(
            cfg.percentile,
            n_startup_trials=cfg.n_startup_trials,
            n_warmup_steps=cfg.n_warmup_steps,
        )
    )
