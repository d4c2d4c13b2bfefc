"""One typed config loaded from params.yaml, and the one place that knows the project's paths.

Nothing else in the package reads params.yaml or hard-codes an output path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mlplatform.errors import ConfigError
from mlplatform.monitoring.settings import MonitoringConfig, PredictionLogSettings
from mlplatform.search.settings import (  # noqa: F401  (TUNE_METRICS, DistributionSpec: re-exported)
    TUNE_METRICS,
    DistributionSpec,
    Scalar,
    TuneConfig,
    WorkersSettings,
)
from mlplatform.serving.release_settings import ReleaseSettings
from mlplatform.strict import Strict
from mlplatform.team.settings import ServerSettings

ColumnKind = Literal["numeric", "categorical", "boolean", "datetime"]


class Paths:
    """Every file the pipeline reads or writes, relative to the project root (the cwd)."""

    def __init__(self, root: Path | str = ".") -> None:
        self.root = Path(root)
        r = self.root
        self.sources = r / "data" / "sources"
        self.raw = r / "data" / "raw" / "dataset.parquet"
        self.raw_meta = r / "data" / "raw" / "source.json"
        self.prepared = r / "data" / "prepared"
        self.schema = self.prepared / "schema.json"
        self.reports = r / "reports"
        self.data_summary = self.reports / "data_summary.json"
        self.tune_report = self.reports / "tune.json"
        self.train_report = self.reports / "train.json"
        self.metrics = self.reports / "metrics.json"
        self.plots = self.reports / "plots"
        self.curves = self.reports / "curves"
        self.explain = self.reports / "explain"
        self.card_md = self.reports / "model_card.md"
        self.card_html = self.reports / "model_card.html"
        self.card_json = self.reports / "card.json"
        self.registration = self.reports / "registration.json"
        self.promotion = self.reports / "promotion.json"
        self.model = r / "models" / "model"
        self.state = r / ".mlplatform"
        self.optuna_journal = self.state / "optuna.journal"
        self.reference = r / "models" / "reference.json"  # the monitoring reference
        self.monitoring = self.reports / "monitoring"
        self.demo = r / "data" / "demo"

    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.parquet"


SPLITS = ("train", "validation", "test")


class SplitConfig(Strict):
    train: Annotated[float, Field(gt=0, lt=1)] = 0.6
    validation: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test: Annotated[float, Field(gt=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"train + validation + test must be 1.0 (got {total:g})")
        return self


class ColumnType(Strict):
    """One entry of data.column_types written as a mapping: a kind, and for dates a format.

    Raises:
        ValueError: (as a pydantic error) a format on a kind other than datetime, or a
            format without any strftime directive.
    """

    kind: ColumnKind
    format: str | None = Field(
        default=None, description="strftime format of text dates, e.g. '%d.%m.%Y' (else ISO)"
    )

    @model_validator(mode="after")
    def _format_for_dates(self) -> ColumnType:
        if self.format is not None:
            if self.kind != "datetime":
                raise ValueError(f"format applies to kind datetime only (kind is {self.kind})")
            if "%" not in self.format:
                raise ValueError(f"format {self.format!r} has no strftime directive (%d.%m.%Y)")
        return self


class DataConfig(Strict):
    """data: the source, the target and roles of columns, the split."""

    source: str = Field(description="Path to a CSV/Parquet file, or a built-in dataset name")
    rows: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="Row count for synthetic generators"
    )
    target: str
    positive_class: Scalar | None = None
    drop_columns: list[str] = []
    sensitive_features: list[str] = []
    slice_columns: list[str] = []
    sensitive_as_features: bool = Field(
        default=False,
        description="Feed sensitive features to the model (off: kept only to audit fairness)",
    )
    time_column: str | None = None
    # A kind (``chist: categorical``) or a mapping (``opened: {kind: datetime, format: ...}``).
    column_types: dict[str, ColumnKind | ColumnType] = {}
    split: SplitConfig = SplitConfig()

    def declared_kind(self, column: str) -> ColumnKind | None:
        """The kind data.column_types gives a column (None: inferred from the data)."""
        entry = self.column_types.get(column)
        return entry.kind if isinstance(entry, ColumnType) else entry

    def declared_date_format(self, column: str) -> str | None:
        """The date format data.column_types gives a column (None: ISO 8601 or detected)."""
        entry = self.column_types.get(column)
        return entry.format if isinstance(entry, ColumnType) else None


class FeaturesConfig(Strict):
    """features: how categorical columns are encoded."""

    max_categories: Annotated[int, Field(ge=2)] = 30
    min_frequency: Annotated[float, Field(ge=0, lt=1)] = 0.0


class ThresholdConfig(Strict):
    """train.threshold: how the binary decision threshold is chosen on validation data."""

    rule: Literal["best_f1", "cost"] = "best_f1"
    cost_fn: Annotated[float, Field(gt=0)] = 5.0
    cost_fp: Annotated[float, Field(gt=0)] = 1.0


class TrainConfig(Strict):
    threshold: ThresholdConfig = ThresholdConfig()


class ExplainConfig(Strict):
    """explain: which SHAP explainer, how many rows, within what time."""

    method: Literal["auto", "tree", "linear", "permutation"] = "auto"
    sample_size: Annotated[int, Field(gt=0)] = 500
    background_size: Annotated[int, Field(gt=0)] = 100
    time_budget_s: Annotated[float, Field(gt=0)] = 300
    top_features: Annotated[int, Field(gt=0)] = 5
    n_local: Annotated[int, Field(ge=0)] = 3


class FairnessLimits(Strict):
    """Largest allowed gap between groups; None reports the gap without a verdict."""

    demographic_parity_max: Annotated[float, Field(ge=0, le=1)] | None = None
    equal_opportunity_max: Annotated[float, Field(ge=0, le=1)] | None = 0.15
    equalized_odds_max: Annotated[float, Field(ge=0, le=1)] | None = 0.15
    min_group_size: Annotated[int, Field(ge=1)] = 30


class CardConfig(Strict):
    owner: str = "unassigned"
    contact: str = "unassigned"
    intended_use: str = ""
    out_of_scope: list[str] = []
    limitations: list[str] = []
    fairness: FairnessLimits = FairnessLimits()


class RegistryConfig(Strict):
    model_name: str = "mlplatform-model"
    mirror_stages: bool = Field(
        default=False, description="Also move deprecated registry stages (Production, ...)"
    )


# Test-set figures (metrics.evaluate) that promotion can compare or put a floor under.
PROMOTION_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "average_precision",
    "log_loss",
    "brier",
    "precision",
    "recall",
    "f1",
    *(
        f"{m}_{avg}"
        for m in ("precision", "recall", "f1")
        for avg in ("macro", "micro", "weighted")
    ),
)


def _known_metric(name: str) -> str:
    if name not in PROMOTION_METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(PROMOTION_METRICS)}")
    return name


class PromotionConfig(Strict):
    """promotion: the gate's mode and thresholds (see registry/gates.py)."""

    mode: Literal["enabled", "dry_run", "disabled"] = "enabled"
    primary_metric: str = "average_precision"
    secondary_metrics: list[str] = ["roc_auc", "recall"]
    reject_drop: Annotated[float, Field(ge=0)] = 0.02
    approve_gain: Annotated[float, Field(ge=0)] = 0.01
    tie_band: Annotated[float, Field(ge=0)] = 0.005
    suspicious_gain: Annotated[float, Field(ge=0)] = 0.05
    max_latency_increase: Annotated[float, Field(ge=0)] = 0.10
    max_prediction_shift: Annotated[float, Field(ge=0, le=1)] = 0.05
    floors: dict[str, float] = {}
    require_card: bool = True
    require_explanations: bool = True
    require_clean_lineage: bool = Field(
        default=False,
        description="Reject versions trained from a dirty tree or on data not in dvc.lock",
    )
    latency_repeats: Annotated[int, Field(ge=5)] = 200
    min_compare_rows: Annotated[int, Field(ge=1)] = Field(
        default=200,
        description="Fewest test rows new to both models (neither trained nor validated on "
        "them) the gate compares on; fewer: manual review",
    )

    @field_validator("primary_metric")
    @classmethod
    def _primary_known(cls, value: str) -> str:
        return _known_metric(value)

    @field_validator("secondary_metrics")
    @classmethod
    def _secondary_known(cls, value: list[str]) -> list[str]:
        return [_known_metric(v) for v in value]

    @field_validator("floors")
    @classmethod
    def _floors_known(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            _known_metric(name)
        return value


class ScoreConfig(Strict):
    chunk_rows: Annotated[int, Field(gt=0)] = 100_000
    on_error: Literal["report", "fail"] = "report"


_DATABASES = ("postgresql", "mysql", "mssql")


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow 3.17 cannot use this tracking URI as the project's store (None: it can)."""
    scheme, sep, rest = uri.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme == "sqlite":
        if not rest.startswith("///") or not rest[3:].strip():
            return (
                f"{uri!r}: a sqlite store is sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        return None
    if scheme.split("+")[0] in _DATABASES or scheme in ("http", "https"):
        if not rest.startswith("//") or not rest[2:].strip("/"):
            return f"{uri!r}: expected {scheme}://host/... "
        return None
    if (scheme or uri) in ("databricks", "databricks-uc"):
        return None
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path, file:, a Windows drive
        return (
            f"{uri!r} is a file store, which MLflow 3.17 keeps in maintenance mode and refuses "
            "by default; use sqlite:///mlflow.db (local) or postgresql://user@host/db (team)"
        )
    hint = " (SQLAlchemy spells it postgresql://)" if scheme == "postgres" else ""
    return (
        f"{uri!r}: unsupported scheme '{scheme}'{hint}; use sqlite:///mlflow.db, "
        "postgresql(+driver)://user@host/db, mysql://..., or http(s)://tracking-server"
    )


class TrackingConfig(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mlplatform"
    user: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _usable_store(cls, value: str) -> str:
        problem = tracking_uri_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Params(Strict):
    """The whole params.yaml, validated (see ``load_params``)."""

    seed: int
    data: DataConfig
    features: FeaturesConfig = FeaturesConfig()
    tune: TuneConfig
    train: TrainConfig = TrainConfig()
    explain: ExplainConfig = ExplainConfig()
    card: CardConfig = CardConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    score: ScoreConfig = ScoreConfig()
    mlflow: TrackingConfig = TrackingConfig()
    server: ServerSettings = ServerSettings()
    prediction_log: PredictionLogSettings = PredictionLogSettings()
    monitoring: MonitoringConfig = MonitoringConfig()
    release: ReleaseSettings = ReleaseSettings()
    search_workers: WorkersSettings = WorkersSettings()

    def section_hash(self, *sections: str) -> str:
        """A short, stable hash of some sections (all of them when none are named)."""
        from mlplatform.io import digest

        dump = self.model_dump(mode="json")
        return digest({k: dump[k] for k in sections} if sections else dump)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping.

    Raises:
        ConfigError: naming the key path and what was expected.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        from mlplatform.config_messages import describe

        raise ConfigError(f"{source}: {describe(exc, raw)}") from None
    # Checks that need the family table: still at load, before any stage runs.
    problems = params.tune.unknown_hyperparameters()
    if problems:
        (where, what), more = problems[0], len(problems) - 1
        extra = f" (and {more} more)" if more else ""
        raise ConfigError(f"{source}: {where}: {what}{extra}")
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate params.yaml.

    Raises:
        ConfigError: the file is missing or unreadable, or a key is unknown, missing or mistyped.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, source=str(path))
