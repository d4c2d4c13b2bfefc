"""What to open next, printed at the end of `make run`."""

from __future__ import annotations

from mlplatform.config import Params, Paths
from mlplatform.io import read_json


def next_steps(params: Params, paths: Paths) -> str:
    lines = ["", "Pipeline finished. Next:"]
    if paths.data_summary.exists():
        rows = read_json(paths.data_summary)["rows"]
        lines.append(
            f"  data        {paths.prepared}/ ({rows['train']} train, {rows['validation']} "
            f"validation, {rows['test']} test rows); summary in {paths.data_summary}"
        )
    if paths.metrics.exists():
        lines.append(f"  metrics     dvc metrics show    (test metrics in {paths.metrics})")
        lines.append(f"  plots       {paths.plots}/*.png")
    if paths.card_html.exists():
        lines.append(f"  model card  {paths.card_html}")
    if paths.promotion.exists():
        decision = read_json(paths.promotion)
        lines.append(
            f"  promotion   {decision.get('decision')} for version "
            f"{decision.get('candidate_version')}"
            f" ({paths.promotion}); history: mlplatform history"
        )
    lines += [
        "  experiments source .venv/bin/activate && mlflow ui   (http://127.0.0.1:5000)",
        "  reproduce   source .venv/bin/activate && dvc repro",
    ]
    if paths.promotion.exists():
        name = params.registry.model_name
        lines.append(
            f"  serve       mlflow models serve -m 'models:/{name}@champion' "
            "--env-manager local --port 5001"
        )
    return "\n".join(lines)
