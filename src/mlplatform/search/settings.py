"""Search settings: ``tune`` (the search: trials, budget, objective, each family's space and
start points), ``tune.fidelity`` (how the search spends its time: rungs over rows,
early stopping, budgets; one field of ``TuneConfig``, read by ``search.rungs`` and
``search.budget``) and ``search_workers`` (how many search workers a ``tune`` runs and how they
watch each other; ``Params.search_workers``, not part of the study's identity: machines with
different worker counts join the same study).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mlplatform.modeling.families import CLASS_WEIGHT, CLASS_WEIGHTS, FAMILIES, FAMILY_NAMES
from mlplatform.strict import Strict

# The model families of the one family table (see families.py).
Family = Literal[FAMILY_NAMES]  # type: ignore[valid-type]
Scalar = str | int | float | bool


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
        forest_max_rows: each forest tree (random forest, extra trees) is grown on a
            bootstrap sample of at most this many rows (``max_samples``), so forests cost
            stops growing with the data; null: random-forest trees see a bootstrap sample as
            large as the data, extra trees all rows.
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


class DistributionSpec(Strict):
    """One hyperparameter's search range: ``low``/``high`` (int or float) or ``choices``.

    Raises:
        ValueError: (as a pydantic error) an incomplete or contradictory range.
    """

    type: Literal["int", "float", "categorical"] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Scalar | None] | None = None

    @model_validator(mode="after")
    def _complete(self) -> DistributionSpec:
        if self.type == "categorical" and self.choices is None:
            raise ValueError("type categorical needs choices")
        if self.type in ("int", "float") and self.choices is not None:
            raise ValueError(f"type {self.type} needs low and high, not choices")
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high, or choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None and not (self.kind == "int" and self.step == 1):
            raise ValueError("a log scale cannot have a step (Optuna refuses it)")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step ({self.step}) must be positive")
        if self.kind == "int" and self.step is not None and not float(self.step).is_integer():
            raise ValueError(
                f"an int range needs a whole step, not {self.step} (write low as a float, "
                "e.g. 0.0, for a float range)"
            )
        return self

    @property
    def kind(self) -> Literal["int", "float", "categorical"]:
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if ints else "float"

    def values(self) -> list[Any] | None:
        """The choices of a categorical range (None: a numeric range)."""
        return list(self.choices) if self.kind == "categorical" and self.choices else None

    def admits(self, value: Any) -> bool:
        """Is ``value`` one this range can draw (a start point must be)?"""
        choices = self.values()
        if choices is not None:  # the same value and type: 1 is not the choice 1.0, nor True
            return any(type(value) is type(c) and value == c for c in choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is not None:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True


# The objectives tune.metric can name (evaluation.metrics.OBJECTIVES; a test keeps them equal).
TUNE_METRICS = ("average_precision", "roc_auc", "log_loss", "brier", "f1", "balanced_accuracy")


class PrunerConfig(Strict):
    enabled: bool = True
    n_startup_trials: Annotated[int, Field(ge=0)] = 5
    n_warmup_steps: Annotated[int, Field(ge=0)] = 0
    percentile: Annotated[float, Field(gt=0, lt=100)] = 50.0


class TuneConfig(Strict):
    """tune: the search (trials, budget, objective, pruning, each family's space).

    Raises:
        ValueError: (as a pydantic error) no family is listed.
    """

    n_trials: Annotated[int, Field(gt=0)] = 40
    timeout_s: Annotated[float, Field(gt=0)] | None = 1800
    metric: str = Field(default="average_precision", description="one of TUNE_METRICS")
    class_weight: Literal["balanced", "none"] = "balanced"
    report_every: Annotated[int, Field(gt=0)] = Field(
        default=25, description="XGBoost boosting rounds between pruning reports"
    )
    rf_steps: Annotated[int, Field(ge=1)] = Field(
        default=4, description="Random forests grow in this many chunks, reporting after each"
    )
    n_jobs: Annotated[int, Field(ge=1)] = 2
    pruner: PrunerConfig = PrunerConfig()
    fidelity: FidelitySettings = FidelitySettings()
    families: dict[Family, dict[str, DistributionSpec | Scalar]]
    # Configurations tried first, in this order, before the sampler's own (a fresh study
    # only): family -> {hyperparameter: value}; a searched hyperparameter left out is drawn,
    # a family not in ``families`` is skipped, a value its range cannot draw is an error.
    start_points: dict[Family, dict[str, Scalar | None]] = Field(default_factory=dict)

    @field_validator("families")
    @classmethod
    def _at_least_one(cls, v: dict) -> dict:
        if not v:
            raise ValueError("list at least one model family")
        return v

    @field_validator("metric")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        if value not in TUNE_METRICS:
            raise ValueError(f"unknown metric {value!r}; expected one of {', '.join(TUNE_METRICS)}")
        return value

    def unknown_hyperparameters(self) -> list[tuple[str, str]]:
        """(key path, message) of every hyperparameter its family does not accept."""
        found = []
        for family, values in self.families.items():
            accepted = FAMILIES[family].hyperparameters | {CLASS_WEIGHT}
            for name, spec in values.items():
                where = f"tune.families.{family}.{name}"
                if name not in accepted:
                    found.append(
                        (where, f"unknown hyperparameter (known: {', '.join(sorted(accepted))})")
                    )
                elif name == CLASS_WEIGHT:
                    drawn = spec.values() if isinstance(spec, DistributionSpec) else [spec]
                    bad = [v for v in drawn or [None] if v not in CLASS_WEIGHTS]
                    if bad:
                        found.append(
                            (where, f"{bad[0]!r} is not one of {', '.join(CLASS_WEIGHTS)}")
                        )
        return found + self.bad_start_points()

    def bad_start_points(self) -> list[tuple[str, str]]:
        """(key path, message) of every start point outside its family's search space."""
        found = []
        for family, values in self.start_points.items():
            if family not in self.families:
                continue  # a family left out of the search is not started either
            space = self.families[family]
            for name, value in values.items():
                where = f"tune.start_points.{family}.{name}"
                spec = space.get(name)
                if spec is None:
                    found.append((where, f"not searched in tune.families.{family}"))
                elif not isinstance(spec, DistributionSpec):
                    if value != spec:
                        found.append((where, f"tune.families.{family}.{name} is fixed at {spec!r}"))
                elif not spec.admits(value):
                    found.append((where, f"{value!r} is outside tune.families.{family}.{name}"))
        return found
