"""The generated basic-auth config, read back by MLflow's own parser."""

from __future__ import annotations

import pytest

from mlplatform.team import auth
from mlplatform.team.settings import ServerError, ServerSettings

PASSWORD = "correct-horse-battery"


def _settings(tmp_path, **kw) -> ServerSettings:
    return ServerSettings(
        backend_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", state_dir=str(tmp_path / "state"), **kw
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "export MLFLOW_AUTH_ADMIN_PASSWORD=... (it is never read from a file)"),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "export MLFLOW_AUTH_ADMIN_PASSWORD=..."),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "at least 12 characters"),
    ],
)
def test_auth_refuses_without_a_proper_password(tmp_path, env, message):
    with pytest.raises(ServerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        auth.prepare(_settings(tmp_path, auth=True), env)
    assert not (tmp_path / "state").exists()  # nothing written before the check


def _mlflow_auth_config_parser():
    """MLflow's own ``read_auth_config``, loaded from its file: importing the package
    ``mlflow.server.auth`` would build the whole auth app (seconds) for one small parser."""
    import importlib.util
    from pathlib import Path

    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("_mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_auth_config


def test_mlflow_reads_the_generated_config_and_the_password_from_env(tmp_path, monkeypatch):
    read_auth_config = _mlflow_auth_config_parser()

    s = _settings(tmp_path, auth=True, default_permission="NO_PERMISSIONS", auth_cache_ttl_s=45)
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}
    extra, folder = auth.prepare(s, env)
    ini = folder / "basic_auth.ini"
    assert extra["MLFLOW_AUTH_CONFIG_PATH"] == str(ini.resolve())
    assert folder.stat().st_mode & 0o777 == 0o700
    assert ini.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in ini.read_text()

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    config = read_auth_config()
    assert config.admin_username == "admin"
    assert config.admin_password == PASSWORD
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.auth_cache_ttl_seconds == 45
    assert config.database_uri == f"sqlite:///{(tmp_path / 'state' / 'basic_auth.db').resolve()}"


def test_the_secret_key_is_kept_when_given_and_generated_per_start_otherwise(tmp_path):
    s = _settings(tmp_path, auth=True)
    given = {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "team-k"}
    assert auth.prepare(s, given)[0]["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "team-k"
    first = auth.prepare(s, {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD})
    second = auth.prepare(s, {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD})
    keys = {first[0]["MLFLOW_FLASK_SERVER_SECRET_KEY"], second[0]["MLFLOW_FLASK_SERVER_SECRET_KEY"]}
    assert len(keys) == 2 and all(len(k) >= 32 for k in keys)
    assert first[1] != second[1]  # each start gets its own private folder


def test_the_auth_store_sits_next_to_the_backend():
    pg = ServerSettings(backend_uri="postgresql://u:pw@db.internal:5432/mlflow")
    assert auth.auth_db_uri(pg) == "postgresql+psycopg2://u:pw@db.internal:5432/mlflow_auth"
    given = pg.model_copy(update={"auth_db_uri": "postgresql://u@other/users"})
    assert auth.auth_db_uri(given) == "postgresql://u@other/users"


def test_mlflows_admin_username_variable_wins(tmp_path):
    s = _settings(tmp_path, admin_username="root-of-team")
    assert auth.admin_username(s, {}) == "root-of-team"
    assert auth.admin_username(s, {"MLFLOW_AUTH_ADMIN_USERNAME": "ops"}) == "ops"
