"""Registered versions and aliases: the thin layer that reads and moves them.

Aliases are the mechanism: ``champion`` serves, ``challenger`` waits for review,
``previous-champion`` keeps the champion it replaced, for rollback. Deprecated stages
(Production / Staging / Archived) can be mirrored for tools that still read them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlplatform.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
STAGE_OF = {CHAMPION: "Production", CHALLENGER: "Staging"}
MAX_TAG = 5000


# --------------------------------------------------------------------------------------
# Versions and aliases.


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at (None: the alias or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def aliases(client: Any, name: str) -> dict[str, str]:
    return {
        a: v
        for a in (CHAMPION, CHALLENGER, PREVIOUS)
        if (v := alias_version(client, name, a)) is not None
    }


def get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"registered model '{name}' has no version {version}") from None


def ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Registered by mlplatform; see the versions' model cards."
        )


def find_version_for_run(client: Any, name: str, run_id: str) -> str | None:
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.run_id == run_id and mv.tags.get("mlplatform.train_run_id") == run_id:
            return str(mv.version)
    return None


def set_alias(client: Any, name: str, alias: str, version: str | None, mirror: bool) -> None:
    """Point an alias at a version (None removes it); mirror to stages if asked."""
    if version is None:
        if alias_version(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
        return
    client.set_registered_model_alias(name, alias, str(version))
    if mirror and alias in STAGE_OF:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, str(version), STAGE_OF[alias])


def archive_stage(client: Any, name: str, version: str, mirror: bool) -> None:
    if mirror:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, str(version), "Archived")


def tag_version(client: Any, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        client.set_model_version_tag(name, str(version), key, text[:MAX_TAG])


# --------------------------------------------------------------------------------------
# The append-only audit history.
