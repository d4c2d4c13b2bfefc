"""``mlplatform demo-batches``: a later batch from the real data, and a deliberately shifted one.

- ``later.csv``: the validation split (rows the reference was not built from, drawn from the
  same population), with the target and a ``request_id`` per row: monitored, it should say
  no drift;
- ``shifted.csv``: the same rows with the two most important numeric features (by the
  reference's SHAP ranking) moved up by one reference standard deviation, a fifth of a third
  numeric feature's values missing, and the most important categorical feature's rows moved
  to its second most common category (``demo_shift`` in the output says which): monitored,
  drift, and retraining recommended;
- ``later_labels.csv``: request_id and label of the later batch, for ``mlplatform feedback``;
- ``later_requests.json``: the later batch as a ``dataframe_split`` body (with its request
  ids) to post to the served model.

Seeded from params (``seed``): the same project writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import Params, Paths
from mlplatform.data.dataset import load_schema, load_split
from mlplatform.errors import MlplatformError
from mlplatform.io import atomic_path, write_json, write_text
from mlplatform.monitoring.reference import load_reference
from mlplatform.monitoring.served import REQUEST_ID


def shift(frame: pd.DataFrame, ref: dict[str, Any], seed: int) -> tuple[pd.DataFrame, dict]:
    """The rows with a deliberate, known shift (see the module docstring)."""
    rng = np.random.default_rng(seed)
    importance = ref.get("importance") or {}
    feats = ref["features"]
    by_rank = sorted(feats, key=lambda n: -(importance.get(n) or 0.0))
    numeric = [n for n in by_rank if feats[n]["kind"] == "numeric" and feats[n]["std"]]
    categorical = [n for n in by_rank if feats[n]["kind"] == "categorical"]
    out = frame.copy()
    done: dict[str, Any] = {"moved_up_one_sd": numeric[:2]}
    for name in numeric[:2]:
        out[name] = pd.to_numeric(out[name], errors="coerce") + feats[name]["std"]
    if len(numeric) > 2:
        name = numeric[2]
        hit = rng.random(len(out)) < 0.2
        out[name] = pd.to_numeric(out[name], errors="coerce").mask(hit)
        done["missing_20pct"] = name
    if categorical:
        name = categorical[0]
        top = list(feats[name]["categories"])
        if len(top) >= 2:
            out[name] = top[1]
            done["all_rows_to_category"] = {name: top[1]}
    return out, done


def run_demo(params: Params, paths: Paths, out_dir: Path | None = None) -> dict[str, Any]:
    """Write the demo batches; returns what was written and the shift applied.

    Raises:
        MlplatformError: the pipeline has not produced the splits or the reference yet.
    """
    if not paths.reference.is_file():
        raise MlplatformError(
            f"{paths.reference}: no monitoring reference yet; run `dvc repro` (or `make run`)"
        )
    out_dir = out_dir or paths.demo
    schema = load_schema(paths)
    ref = load_reference(paths.reference)
    later = load_split(paths, "validation")[[*schema.feature_names, schema.target]]
    later = later.reset_index(drop=True)
    later.insert(0, REQUEST_ID, [f"later-{i}" for i in range(len(later))])
    shifted, how = shift(later, ref, params.seed)
    shifted[REQUEST_ID] = [f"shifted-{i}" for i in range(len(shifted))]
    files = {
        "later": out_dir / "later.csv",
        "shifted": out_dir / "shifted.csv",
        "labels": out_dir / "later_labels.csv",
        "requests": out_dir / "later_requests.json",
    }
    for key, frame in (("later", later), ("shifted", shifted)):
        with atomic_path(files[key], ".csv") as tmp:
            frame.to_csv(tmp, index=False)
    labels = later[[REQUEST_ID, schema.target]].rename(columns={schema.target: "label"})
    with atomic_path(files["labels"], ".csv") as tmp:
        labels.to_csv(tmp, index=False)
    body = json.loads(later.drop(columns=[schema.target]).to_json(orient="split", index=False))
    write_text(files["requests"], json.dumps({"dataframe_split": body}) + "\n")
    summary = {"rows": len(later), "files": {k: str(v) for k, v in files.items()}, "shift": how}
    write_json(out_dir / "demo_shift.json", summary)
    return summary
