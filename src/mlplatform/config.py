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
from mlplatform.modeling.families import FAMILY_NAMES
from mlplatform.strict import Strict
from mlplatform.team.settings import ServerSettings

ColumnKind = Literal["numeric", "categorical", "boolean", "datetime"]
# The model families of the one family table (see families.py).
Family = Literal[FAMILY_NAMES]  # type: ignore[valid-type]
Scalar = str | int | float | bool


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
    column_types: dict[str, ColumnKind] = {}
    split: SplitConfig = SplitConfig()


class FeaturesConfig(Strict):
    """features: how categorical columns are encoded."""

    max_categories: Annotated[int, Field(ge=2)] = 30
    min_frequency: Annotated[float, Field(ge=0, lt=1)] = 0.0


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
        return self

    @property
    def kind(self) -> Literal["int", "float", "categorical"]:
        if self.type is not None:
            return self.type
        if self.choices is not None:
            return "categorical"
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if ints else "float"


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
    metric: str = "average_precision"
    class_weight: Literal["balanced", "none"] = "balanced"
    report_every: Annotated[int, Field(gt=0)] = Field(
        default=25, description="XGBoost boosting rounds between pruning reports"
    )
    rf_steps: Annotated[int, Field(ge=1)] = Field(
        default=4, description="Random forests grow in this many chunks, reporting after each"
    )
    n_jobs: Annotated[int, Field(ge=1)] = 2
    pruner: PrunerConfig = PrunerConfig()
    families: dict[Family, dict[str, DistributionSpec | Scalar]]

    @field_validator("families")
    @classmethod
    def _at_least_one(cls, v: dict) -> dict:
        if not v:
            raise ValueError("list at least one model family")
        return v


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


class TrackingConfig(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mlplatform"
    user: str | None = None


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

    def section_hash(self, *sections: str) -> str:
        """A short, stable hash of some sections (all of them when none are named)."""
        from mlplatform.io import digest

        dump = self.model_dump(mode="json")
        return digest({k: dump[k] for k in sections} if sections else dump)


_EXPECT = {
    "missing": "is required but missing",
    "extra_forbidden": "is not a known key",
}


_SCALARS = {"str", "int", "float", "bool", "none"}


def _locate(loc: tuple, raw: Any, missing: bool) -> tuple[tuple, tuple, str | None, Any]:
    """Map a pydantic error location onto the user's file.

    Pydantic puts the name of each union branch it tried into ``loc`` (``str``,
    ``function-after[..., DistributionSpec]``...). Walking the raw input keeps only real keys.

    Returns:
        (path of the union or the key, full key path, union branch or None, value there).
    """
    path: list[str] = []
    group: tuple | None = None
    branch: str | None = None
    node = raw
    at_group = raw
    for i, part in enumerate(loc):
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
            path.append(str(part))
        elif missing and i == len(loc) - 1:
            path.append(str(part))  # a missing key is not in the input by definition
        elif branch is None:
            group, branch, at_group = tuple(path), str(part), node
    full = tuple(path)
    return (group if group is not None else full), full, branch, at_group


def _branch_name(branch: str) -> str:
    return branch.rstrip("]").split(",")[-1].strip() if "[" in branch else branch


def _describe(items: list[tuple[dict, tuple, str | None, Any]]) -> str:
    _, _, branch, value = items[0]
    if branch is not None:
        # Keep the branches that match the shape of what the user wrote.
        shaped = [i for i in items if (i[2] not in _SCALARS) == isinstance(value, dict)]
        items = shaped or items
    err, full, _, _ = max(items, key=lambda i: len(i[0]["loc"]))
    where = ".".join(full) or "(top level)"
    if err["type"] in _EXPECT:
        return f"{where} {_EXPECT[err['type']]}"
    if len(items) > 1 and len({len(i[0]["loc"]) for i in items}) == 1:
        names = sorted({_branch_name(str(i[2])) for i in items})
        msg = f"not a valid value (expected one of: {', '.join(names)})"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{where}: {msg}{shown}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping.

    Raises:
        ConfigError: naming the key path and what was expected.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        groups: dict[tuple, list] = {}
        for e in exc.errors():
            group, full, branch, value = _locate(e["loc"], raw, e["type"] == "missing")
            groups.setdefault(group, []).append((e, full, branch, value))
        first = next(iter(groups.values()))
        more = f" (and {len(groups) - 1} more)" if len(groups) > 1 else ""
        raise ConfigError(f"{source}: {_describe(first)}{more}") from None


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
