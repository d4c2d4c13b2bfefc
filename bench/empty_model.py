"""A model that does no work, for ``bench/scoring.py``.

Served in place of our model (same MLmodel file and signature, only the loader swapped), it
answers every row with the same class and probabilities, so its latency is what MLflow's
scoring server costs per request with this signature: the lower bound for any model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlplatform.model_format import PREDICTION, probability_column


class EmptyModel:
    def __init__(self, folder: Path) -> None:
        classes = json.loads((folder / "model.json").read_text())["classes"]
        share = 1.0 / len(classes)
        self.row = {PREDICTION: classes[0], **{probability_column(c): share for c in classes}}

    def predict(self, model_input: Any, params: dict | None = None) -> list[dict]:
        return [dict(self.row) for _ in range(len(model_input))]


def _load_pyfunc(data_path: str) -> EmptyModel:
    return EmptyModel(Path(data_path))
