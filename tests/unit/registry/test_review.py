"""Manual review against a real sqlite registry: a review only holds for the champion the
version was compared with."""

from __future__ import annotations

import warnings

import pytest

from mlplatform.config import Paths, load_params
from mlplatform.errors import RegistryError
from mlplatform.registry import promote, versions
from support.mlflow_store import new_client
from support.project import write_project


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import mlplatform

    monkeypatch.setattr(mlplatform, "USER_TRACKING_URI", None)
    monkeypatch.setattr(mlplatform, "USER_REGISTRY_URI", None)
    client = new_client(tmp_path)
    project = write_project(
        tmp_path, {"mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    )
    params = load_params(project / "params.yaml")
    name = params.registry.model_name
    (tmp_path / "model").mkdir()
    versions.ensure_registered_model(client, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            client.create_model_version(name, str(tmp_path / "model"))
    # v1 champion; v2 went to review when compared with v1.
    versions.set_alias(client, name, versions.CHAMPION, "1", mirror=False)
    versions.set_alias(client, name, versions.CHALLENGER, "2", mirror=False)
    versions.tag_version(
        client,
        name,
        "2",
        {"promotion.decision": "review", "promotion.champion_at_decision": "1"},
    )
    return params, Paths(tmp_path), client, name


def test_review_approves_when_the_champion_is_unchanged(setup):
    params, paths, client, name = setup
    out = promote.review(params, paths, version="2", approve=True, reviewer="ann", reason="ok")
    assert out["decision"] == "approve"
    assert versions.aliases(client, name) == {"champion": "2", "previous-champion": "1"}


def test_stale_review_is_refused_after_the_champion_changed(setup):
    params, paths, client, name = setup
    versions.set_alias(client, name, versions.CHAMPION, "3", mirror=False)
    with pytest.raises(RegistryError, match="compared with champion 1, but the champion is now 3"):
        promote.review(params, paths, version="2", approve=True, reviewer="ann", reason="ok")
    # Rejecting a stale challenger is still allowed.
    out = promote.review(params, paths, version="2", approve=False, reviewer="ann", reason="no")
    assert out["decision"] == "reject"
    assert versions.CHALLENGER not in versions.aliases(client, name)


def test_approving_another_version_clears_a_waiting_challenger(setup):
    _, _, client, name = setup
    after = promote._apply(
        client, name, "3", "approve", versions.aliases(client, name), mirror=False
    )
    assert after == {"champion": "3", "previous-champion": "1"}
