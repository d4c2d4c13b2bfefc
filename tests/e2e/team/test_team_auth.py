"""Basic auth on the shared tracking server (users and grants in PostgreSQL too).

Signed-in users get NO_PERMISSIONS on what nobody granted them, so a READ grant is what lets
the reader in, and nothing else does.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
import requests

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def server(tmp_path_factory, team_server):
    folder = tmp_path_factory.mktemp("team-auth")
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with team_server(folder, env=env, auth=True, default_permission="NO_PERMISSIONS") as srv:
        print(f"server with auth started in {srv.started_s:.1f} s")
        yield srv


@pytest.fixture
def as_user(monkeypatch):
    """Act as a user the way every MLflow client does: through the environment."""

    def switch(name: str, password: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    return switch


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def _cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """``mlplatform server ...`` in this process (the same entry point, no re-import)."""
    from mlplatform.team.cli import main

    monkeypatch.setattr(sys, "argv", ["mlplatform-server", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _denied(call) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        call()
    return info.value.error_code


def test_the_auth_store_lives_in_postgresql_and_its_config_is_private(server, pg):
    from mlplatform.team.auth import auth_db_uri

    assert pg.exists(auth_db_uri(server.settings))
    folder = server.private_dir
    assert folder.stat().st_mode & 0o777 == 0o700
    ini = folder / "basic_auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600
    assert ADMIN_PASSWORD not in ini.read_text()


def test_a_request_without_credentials_is_refused(server):
    api = f"{server.uri}/api/2.0/mlflow/experiments/search"
    assert requests.get(api, params={"max_results": 1}, timeout=10).status_code == 401
    wrong = requests.get(api, params={"max_results": 1}, auth=("admin", "nope"), timeout=10)
    assert wrong.status_code == 401
    right = requests.get(api, params={"max_results": 1}, auth=("admin", ADMIN_PASSWORD), timeout=10)
    assert right.status_code == 200
    assert requests.get(f"{server.uri}/health", timeout=10).status_code == 200


def test_a_reader_can_read_but_not_write(server, as_user):
    from mlplatform.team.auth import add_user

    as_user("admin", ADMIN_PASSWORD)
    admin = _client(server)
    shared = admin.create_experiment("shared")
    other = admin.create_experiment("other")
    run = admin.create_run(shared, run_name="by-admin")
    admin.log_metric(run.info.run_id, "auc", 0.9)
    admin.set_terminated(run.info.run_id)
    reader_password = secrets.token_urlsafe(12)
    done = add_user(server.uri, "reader", reader_password, "READ", experiments=["shared"])
    assert done == ["user 'reader' created", "READ on experiment 'shared'"]

    as_user("reader", reader_password)
    reader = _client(server)
    assert reader.get_experiment(shared).name == "shared"
    assert [r.info.run_id for r in reader.search_runs([shared])] == [run.info.run_id]
    assert _denied(lambda: reader.create_run(shared)) == "PERMISSION_DENIED"
    assert _denied(lambda: reader.log_metric(run.info.run_id, "auc", 0.1)) == "PERMISSION_DENIED"
    assert _denied(lambda: reader.get_experiment(other)) == "PERMISSION_DENIED"
    assert admin.get_run(run.info.run_id).data.metrics == {"auc": 0.9}

    # Granting again changes the level: now the same user may write.
    as_user("admin", ADMIN_PASSWORD)
    assert add_user(server.uri, "reader", None, "EDIT", experiments=[shared])[-1] == (
        f"EDIT on experiment '{shared}'"
    )
    as_user("reader", reader_password)
    assert reader.create_run(shared).info.experiment_id == shared


def test_the_cli_adds_a_user_and_the_fluent_api_uses_env_credentials(
    server, tmp_path, as_user, capsys, monkeypatch
):
    as_user("admin", ADMIN_PASSWORD)
    _client(server).create_experiment("team-writes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    writer_password = secrets.token_urlsafe(12)
    monkeypatch.setenv("MLPLATFORM_NEW_USER_PASSWORD", writer_password)
    code, out, err = _cli(
        capsys, monkeypatch, "add-user", "writer", "--permission", "EDIT",
        "--experiment", "team-writes", "--uri", server.uri,
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.splitlines() == ["user 'writer' created", "EDIT on experiment 'team-writes'"]

    # What a project command does: the fluent API, credentials from the environment only.
    script = (
        "import mlflow\n"
        "mlflow.set_experiment('team-writes')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('auc', 0.7)\n"
        "print(run.info.run_id)\n"
    )
    as_writer = {**env, "MLFLOW_TRACKING_USERNAME": "writer"}
    as_writer["MLFLOW_TRACKING_PASSWORD"] = writer_password
    done = subprocess.run(
        [sys.executable, "-c", script], env=as_writer,
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = _client(server).get_run(done.stdout.strip().splitlines()[-1])
    assert run.data.metrics == {"auc": 0.7}
    assert run.info.user_id == "writer"


def test_add_user_without_admin_credentials_is_one_line(server, capsys, monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLPLATFORM_NEW_USER_PASSWORD", secrets.token_urlsafe(12))
    code, _, err = _cli(capsys, monkeypatch, "add-user", "eve", "--uri", server.uri)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "credentials were refused" in err


def test_auth_without_a_password_refuses_to_start_and_creates_nothing(tmp_path, pg):
    uri = pg.fresh_uri("noauth")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlplatform.team", "--auth", "--backend-uri", uri],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: basic auth needs the admin password in the environment: export "
        "MLFLOW_AUTH_ADMIN_PASSWORD=... (it is never read from a file)"
    ]
    assert not pg.exists(uri)
    assert not pg.exists(f"{uri}_auth")
