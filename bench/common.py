"""What the benchmarks share: the project's params.yaml with overrides, in a scratch folder."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def bench_params(workdir: Path, overrides: dict):
    """params.yaml with ``{"dotted.key": value}`` overrides and a sqlite store in workdir."""
    from mlplatform.config import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, key = dotted.split(".")
        for p in parents:
            node = node[p]
        node[key] = value
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    return parse_params(raw)
