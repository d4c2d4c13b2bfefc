"""Register: the trained model becomes a new version of the registered model.

Once per training run (a second ``register`` of the same run finds its version), with the
run's lineage, the test metrics and the model card as the version's description.
"""

from __future__ import annotations

import logging
from typing import Any

from mlplatform import locks, tracking
from mlplatform.config import Params, Paths
from mlplatform.io import read_json, write_json
from mlplatform.registry import versions
from mlplatform.registry.events import CardStore, refresh_description

log = logging.getLogger(__name__)

# Run tags copied onto the version: where it came from.
LINEAGE_PREFIXES = (
    "mlplatform.",
    "dvc.lock.",
    "dvc.stage.",
    "lib.",
    "mlflow.source.git",
    "optuna.",
)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Register the model of reports/train.json; write reports/registration.json."""
    client, _ = tracking.setup(params)
    name = params.registry.model_name
    trained = read_json(paths.train_report)
    evaluation = read_json(paths.metrics)
    with locks.registry_lock(tracking.registry_uri(params), name, paths.state):
        # Under the lock: two registers of one run must not make two versions.
        version = register_version(client, name, trained, evaluation)
    refresh_description(params, paths, client, CardStore(client), version, local=True)
    payload = {
        "model_name": name,
        "version": version,
        "run_id": trained["run_id"],
        "model_uri": f"models:/{name}/{version}",
    }
    write_json(paths.registration, payload)
    return payload


def register_version(client: Any, name: str, trained: dict, evaluation: dict) -> str:
    """The version of this training run, created with its lineage tags if it is new."""
    versions.ensure_registered_model(client, name)
    version = versions.find_version_for_run(client, name, trained["run_id"])
    if version is not None:
        return version
    run = client.get_run(trained["run_id"])
    lineage = {
        k: v
        for k, v in run.data.tags.items()
        if k.startswith(LINEAGE_PREFIXES) and k != "mlplatform.stage"
    }
    tags = {
        **lineage,
        "mlplatform.train_run_id": trained["run_id"],
        "mlplatform.family": trained["family"],
        "mlplatform.threshold": str(trained["threshold"]),
        **{
            f"test.{k}": f"{v:.6g}"
            for k, v in evaluation["test"].items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
    }
    mv = client.create_model_version(
        name, source=trained["model_uri"], run_id=trained["run_id"], tags=tags
    )
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)
