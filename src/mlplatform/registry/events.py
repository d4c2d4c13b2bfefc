"""What the registry keeps of each decision: the audit record, the version's tags, and the
re-rendered model cards of the versions it touched.

``promote``, ``review`` and ``rollback`` all end with ``record_event``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlplatform.config import Params, Paths
from mlplatform.evaluation import card
from mlplatform.io import read_json
from mlplatform.registry import audit, versions

CARD_ARTIFACT = "model_card/card.json"


class CardStore:
    """The card.json stored on training runs, each downloaded at most once per command."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._cache: dict[str, dict[str, Any] | None] = {}

    def context(self, run_id: str) -> dict[str, Any] | None:
        """The card context logged on a training run (None: the run has no card)."""
        if run_id not in self._cache:
            self._cache[run_id] = self._download(run_id)
        ctx = self._cache[run_id]
        return None if ctx is None else json.loads(json.dumps(ctx))  # callers may edit it

    @staticmethod
    def _download(run_id: str) -> dict[str, Any] | None:
        import mlflow

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=CARD_ARTIFACT, dst_path=tmp
                )
                return json.loads(Path(path).read_text())
        except Exception:  # a version registered by other means has no card
            return None


def is_local(paths: Paths, client: Any, name: str, version: str) -> bool:
    """Was this version trained in this project (so reports/ hold its card and plots)?"""
    if not paths.train_report.exists():
        return False
    run_id = read_json(paths.train_report)["run_id"]
    return versions.get_version(client, name, version).run_id == run_id


def refresh_description(
    params: Params,
    paths: Paths,
    client: Any,
    cards: CardStore,
    version: str,
    local: bool = False,
) -> None:
    """Re-render a version's card with its approvals so far.

    The card goes into the version's description and, whole, onto its training run as
    ``model_card/model_card_v<version>.{md,html}``. The card stage's own files in reports/
    are left alone (they are that stage's DVC outputs).

    Args:
        local: the version is the one this project just trained, so the card context (and
            the plots for the HTML page) come from reports/; otherwise from the card.json
            stored on the version's training run (Markdown only).
    """
    name = params.registry.model_name
    approvals = audit.approvals_for(audit.history(client, name), version)
    if local and paths.card_json.exists():
        ctx = read_json(paths.card_json)
    else:
        ctx = cards.context(versions.get_version(client, name, version).run_id)
        if ctx is None:
            return
    ctx["model"]["version"] = version
    ctx["approvals"] = approvals
    client.update_model_version(name, version, description=card.render_description(ctx))
    run_id = ctx["model"]["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / f"model_card_v{version}.md"
        no_images = dict.fromkeys(card.image_files(paths))
        md.write_text(card.render_markdown(ctx, no_images))
        client.log_artifact(run_id, str(md), "model_card")
        if local:
            page = Path(tmp) / f"model_card_v{version}.html"
            page.write_text(card.render_html(ctx, card.embedded_images(paths)))
            client.log_artifact(run_id, str(page), "model_card")


def record_event(
    params: Params,
    paths: Paths,
    client: Any,
    cards: CardStore,
    record: dict[str, Any],
    touched: set[str | None],
    tags: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Append the record to the audit history, tag a version, refresh the touched cards.

    Call under the registry lock (sequence numbers must not repeat).

    Args:
        record: the event (action, version, decision, actor, reason, ...).
        touched: versions whose cards show this event (None entries are ignored).
        tags: from the appended record (with its ``seq`` and ``when``), the version to tag
            and its tags; None tags nothing.

    Returns:
        The record as appended.
    """
    name = params.registry.model_name
    record = audit.append(client, name, record)
    if tags is not None:
        version, values = tags(record)
        versions.tag_version(client, name, version, values)
    for v in sorted(touched - {None}):
        refresh_description(params, paths, client, cards, v, local=is_local(paths, client, name, v))
    return record
