"""The data a run read, as MLflow dataset inputs (the "Dataset" column of the runs table).

Each prepared split is one dataset: its name says the source and the split, its digest is
the file's md5 (the hash DVC records for that file), its context is the split's role
(training, validation, test), and its source is the file with the DVC hash of its folder.
A change of data gives another digest, visible in ``mlflow ui`` next to every run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mlplatform.config import Params, Paths
from mlplatform.io import file_md5

CONTEXT = {"train": "training", "validation": "validation", "test": "test"}


@functools.lru_cache(maxsize=16)
def _entity(path: str, md5: str, name: str, dvc_hash: str | None) -> Any:
    """The MLflow Dataset entity of one split file (cached: trials log the same splits).

    Built directly, as ``mlflow.data.from_pandas`` would (same schema and profile fields):
    its source resolution warns about a local path on every call in MLflow 3.17.
    """
    import pandas as pd
    from mlflow.entities import Dataset
    from mlflow.models import infer_signature

    frame = pd.read_parquet(path)
    return Dataset(
        name=name,
        digest=md5,
        source_type="local",
        source=json.dumps({"uri": path, "dvc_folder_hash": dvc_hash}, sort_keys=True),
        schema=json.dumps({"mlflow_colspec": infer_signature(frame).inputs.to_dict()}),
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )


def split_inputs(params: Params, paths: Paths, splits: tuple[str, ...]) -> list[Any]:
    """DatasetInputs for the prepared splits a run read (for ``MlflowClient.log_inputs``)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mlplatform.tracking import dvc_lock_hashes

    dvc_hash = dvc_lock_hashes(paths.root, [paths.prepared]).get(str(paths.prepared))
    inputs = []
    for split in splits:
        path = paths.split(split)
        entity = _entity(
            str(path), file_md5(path), f"{Path(params.data.source).stem}-{split}", dvc_hash
        )
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT[split])]))
    return inputs


def log_splits(client: Any, run_id: str, params: Params, paths: Paths, splits: tuple[str, ...]):
    """Log the splits a run read as its dataset inputs."""
    client.log_inputs(run_id, datasets=split_inputs(params, paths, splits))
