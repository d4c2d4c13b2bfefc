"""The prepared dataset as every later stage reads it: its schema and its splits.

``prepare`` writes data/prepared/ (train/validation/test Parquet and schema.json); this
module is the one place that reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlplatform.config import Paths
from mlplatform.data.columns import ColumnSpec
from mlplatform.errors import DataValidationError
from mlplatform.io import read_json


@dataclass(frozen=True)
class DatasetSchema:
    """What every later stage needs to know about the prepared data."""

    target: str
    classes: list[Any]
    positive_class: Any
    features: list[ColumnSpec]
    sensitive_features: list[str]
    slice_columns: list[str]
    time_column: str | None
    source: str

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"

    @property
    def feature_names(self) -> list[str]:
        return [s.name for s in self.features]

    def encode_target(self, values: pd.Series) -> pd.Series:
        """Target values -> class indices (binary: 1 is the positive class)."""
        lookup = {str(c): i for i, c in enumerate(self.classes)}
        return values.astype(str).map(lookup).astype("int64")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "positive_class": self.positive_class,
            "features": [s.to_dict() for s in self.features],
            "sensitive_features": self.sensitive_features,
            "slice_columns": self.slice_columns,
            "time_column": self.time_column,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSchema:
        return cls(
            target=d["target"],
            classes=d["classes"],
            positive_class=d["positive_class"],
            features=[ColumnSpec.from_dict(s) for s in d["features"]],
            sensitive_features=d["sensitive_features"],
            slice_columns=d["slice_columns"],
            time_column=d["time_column"],
            source=d["source"],
        )


def load_schema(paths: Paths) -> DatasetSchema:
    """The schema prepare wrote (data/prepared/schema.json).

    Raises:
        MlplatformError: prepare has not run here yet.
    """
    return DatasetSchema.from_dict(read_json(paths.schema))


def load_split(paths: Paths, name: str) -> pd.DataFrame:
    """One prepared split (train, validation or test) as prepare wrote it.

    Raises:
        DataValidationError: prepare has not run here yet.
    """
    path = paths.split(name)
    if not path.is_file():
        raise DataValidationError(f"{path}: not found; run `mlplatform prepare` first")
    return pd.read_parquet(path)
