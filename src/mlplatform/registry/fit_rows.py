"""Which test rows the gate may compare two versions on: those neither was fit on.

A champion trained before a change of seed, split fractions or data may have been fit on
rows that are now in the test split (and so may the candidate, for a version promoted again
later); graded on them, it looks better than it is. Each version's training run carries the
fingerprints of its training and validation rows (``data.fingerprints``); versions
registered before that have none, which the decision record says.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.data import fingerprints


@dataclass
class Comparison:
    """The rows a decision was measured on, and why the others were left out."""

    test_rows: int
    compared_rows: int
    min_rows: int
    # "candidate v3" -> test rows that version was fit on (trained or validated on).
    excluded_by: dict[str, int] = field(default_factory=dict)
    # Versions with no record of their fit rows (registered before they were recorded).
    unrecorded: list[str] = field(default_factory=list)

    @property
    def excluded_rows(self) -> int:
        return self.test_rows - self.compared_rows

    def why(self) -> str:
        """The exclusions in words, for the decision record."""
        if not self.excluded_rows:
            text = f"all {self.test_rows} test rows are new to the models"
        else:
            seen = ", ".join(f"{k} was fit on {n}" for k, n in self.excluded_by.items() if n)
            text = (
                f"{self.excluded_rows} of {self.test_rows} test rows left out because a model "
                f"was trained or validated on them ({seen})"
            )
        if self.unrecorded:
            text += (
                f"; {', '.join(self.unrecorded)} has no record of its fit rows (registered "
                "before they were recorded), so its own training rows could not be left out"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excluded_rows": self.excluded_rows, "why": self.why()}


def download(run_id: str | None) -> np.ndarray | None:
    """The fit-row fingerprints stored on a training run (None: the run has none)."""
    import mlflow

    from mlplatform.model_trust import quiet_downloads

    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=fingerprints.ARTIFACT, dst_path=tmp
            )
            return fingerprints.read(Path(path))
    except Exception:  # registered before fit rows were recorded, or by other means
        return None


def select(
    test: pd.DataFrame,
    target: str,
    models: dict[str, tuple[Any, np.ndarray | None]],
    min_rows: int,
) -> tuple[np.ndarray, Comparison]:
    """The test rows none of the models was fit on.

    Args:
        test: today's test split.
        target: its target column.
        models: label ("candidate v3") -> (the loaded model or None if it failed to load,
            its fit-row fingerprints or None if it has none).
        min_rows: promotion.min_compare_rows (recorded with the comparison).

    Returns:
        (mask of the rows to compare on, the comparison record).
    """
    keep = np.ones(len(test), dtype=bool)
    excluded: dict[str, int] = {}
    unrecorded = []
    for label, (model, fit) in models.items():
        if fit is None:
            unrecorded.append(label)
            continue
        if model is None:
            continue  # it failed to load: the gate decides on that, not on rows
        try:
            values = fingerprints.fingerprints(test, model._model_impl.specs, target)
        except KeyError:  # its inputs are not in today's data: it cannot be scored on it
            continue
        seen = fingerprints.seen(values, fit)
        excluded[label] = int(seen.sum())
        keep &= ~seen
    return keep, Comparison(len(test), int(keep.sum()), min_rows, excluded, unrecorded)
