"""Search settings: ``tune.fidelity`` (how the search spends its time: rungs over rows,
early stopping, budgets; one field of ``TuneConfig``, read by ``search.rungs`` and
``search.budget``) and ``search_workers`` (how many search workers a ``tune`` runs and how they
watch each other; ``Params.search_workers``, not part of the study's identity: machines with
different worker counts join the same study).
"""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import Field, field_validator

from mlplatform.strict import Strict


class WorkersSettings(Strict):
    """search_workers: parallel search (``mlplatform tune --workers N``).

    ``workers`` unset (and no ``--workers`` / ``MLPLATFORM_TUNE_WORKERS``) keeps the single
    search of one process. ``threads`` unset = cores // workers for each worker.
    """

    workers: Annotated[int, Field(ge=1)] | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    heartbeat_interval_s: Annotated[int, Field(ge=1)] = Field(
        default=10, description="RDB storage: how often a running trial says it is alive"
    )
    grace_period_s: Annotated[int, Field(ge=2)] = Field(
        default=30, description="RDB storage: a trial silent this long is failed and retried"
    )


class FidelitySettings(Strict):
    """tune.fidelity: multi-fidelity over training rows and cheaper fits.

    Attributes:
        rungs: fractions of the train split each trial fits on in turn (stratified, seeded,
            nested subsamples); the last must be 1.0. ``[1.0]`` turns rungs off (one fit on
            all rows, the pre-rung search).
        reduction_factor: at each rung below the last a trial goes on only if its rung value
            is in the best 1/reduction_factor of the trials that reached that rung.
        min_trials: the first trials of a family at a rung are always promoted.
        min_rows: no rung fits on fewer rows than this (small data: rungs merge).
        min_class_rows: a rung holds at least this many rows of each class (all of a rarer
            class), so imbalanced data keeps its positives on every rung.
        early_stopping_rounds: XGBoost stops when the validation metric has not improved for
            this many rounds (n_estimators is then a cap and the rounds used an outcome);
            null turns it off.
        forest_max_rows: each random-forest tree is grown on a bootstrap sample of at most
            this many rows (``max_samples``), so forests cost stops growing with the data;
            null: every tree sees a bootstrap sample as large as the data.
    """

    rungs: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [1 / 9, 1 / 3, 1.0]
    )
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0
    min_trials: Annotated[int, Field(ge=1)] = 2
    min_rows: Annotated[int, Field(ge=1)] = 200
    min_class_rows: Annotated[int, Field(ge=1)] = 300
    early_stopping_rounds: Annotated[int, Field(ge=1)] | None = 50
    forest_max_rows: Annotated[int, Field(ge=1)] | None = 100_000

    @field_validator("rungs")
    @classmethod
    def _ends_with_all_rows(cls, v: list[float]) -> list[float]:
        if not v or v[-1] != 1.0 or any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(
                "rungs must increase and end with 1.0 (all rows), e.g. [0.11, 0.33, 1.0]"
            )
        return v

    @property
    def rungs_enabled(self) -> bool:
        return len(self.rungs) > 1

    @property
    def active(self) -> bool:
        """Any of it on (off: rungs [1.0], no early stopping, no forest cap: the old search)."""
        return (
            self.rungs_enabled
            or self.early_stopping_rounds is not None
            or self.forest_max_rows is not None
        )
