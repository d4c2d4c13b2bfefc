"""Server settings, URIs and the server command line: pure parts, no server started."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlplatform.errors import ConfigError
from mlplatform.team import database, server
from mlplatform.team.settings import ServerError, ServerSettings, resolve


def test_environment_overrides_params_and_flags_override_both():
    base = ServerSettings(port=5001, workers=3)
    env = {"MLPLATFORM_SERVER_PORT": "6000", "MLPLATFORM_SERVER_ALLOWED_HOSTS": "a:1, b:2"}
    s = resolve(base, env)
    assert (s.port, s.workers, s.allowed_hosts) == (6000, 3, ["a:1", "b:2"])
    assert resolve(base, env, port=7000, workers=None).port == 7000
    assert resolve(None, {"MLPLATFORM_SERVER_AUTH": "true"}).auth is True
    assert resolve(None, {}).backend_uri == "postgresql://postgres@127.0.0.1:5432/mlflow"


@pytest.mark.parametrize(
    ("env", "flags", "named"),
    [
        ({"MLPLATFORM_SERVER_PORT": "http"}, {}, "MLPLATFORM_SERVER_PORT"),
        (
            {"MLPLATFORM_SERVER_DEFAULT_PERMISSION": "ADMIN"},
            {},
            "MLPLATFORM_SERVER_DEFAULT_PERMISSION",
        ),
        ({}, {"port": 70000}, "--port"),
        ({}, {"backend_uri": "mlflow.db"}, "--backend-uri"),
        ({"MLPLATFORM_SERVER_ALLOWED_HOSTS": " , "}, {}, "MLPLATFORM_SERVER_ALLOWED_HOSTS"),
    ],
)
def test_a_bad_value_names_its_source(env, flags, named):
    with pytest.raises(ConfigError) as info:
        resolve(None, env, **flags)
    assert str(info.value).startswith(f"{named}:")
    assert "\n" not in str(info.value)


def test_unknown_keys_in_the_params_section_are_errors():
    with pytest.raises(ValueError, match="extra"):
        ServerSettings.model_validate({"prot": 5000})


def test_uris_get_the_installed_driver_and_print_masked():
    assert database.with_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database.with_driver("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database.with_driver("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database.with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert database.masked("postgresql://u:pw%40x@h:5/db") == "postgresql://u:***@h:5/db"
    assert database.is_postgres("postgresql+psycopg2://h/db")
    assert not database.is_postgres("sqlite:///x.db")
    sibling = database.sibling("postgresql://u:pw@h:5/mlflow?sslmode=require", "_auth")
    assert sibling == "postgresql+psycopg2://u:pw@h:5/mlflow_auth?sslmode=require"
    with pytest.raises(ServerError, match=r"postgresql://u:\*\*\*@h/: the URI names no database"):
        database.database_name("postgresql://u:secret@h/")


def test_a_refusing_postgresql_is_one_line_with_the_password_masked():
    with pytest.raises(ServerError) as info:
        database.ensure_database("postgresql://team:hunter2-pw@127.0.0.1:1/mlflow")
    message = str(info.value)
    assert message.startswith("postgresql://team:***@127.0.0.1:1/mlflow: cannot connect (")
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("host", "port", "hosts", "uri"),
    [
        ("127.0.0.1", 5000, ["127.0.0.1:5000", "localhost:5000"], "http://127.0.0.1:5000"),
        ("localhost", 80, ["127.0.0.1:80", "localhost:80", "127.0.0.1", "localhost"], None),
        ("::1", 5000, ["[::1]:5000"], "http://[::1]:5000"),
        ("10.1.2.3", 5000, ["10.1.2.3:5000"], "http://10.1.2.3:5000"),
    ],
)
def test_allowed_hosts_name_exactly_the_bound_address(host, port, hosts, uri):
    s = ServerSettings(host=host, port=port)
    assert server.allowed_hosts(s) == hosts
    if uri:
        assert server.tracking_uri(s) == uri


def test_every_interface_needs_named_hosts():
    with pytest.raises(ServerError, match="--allowed-hosts"):
        server.allowed_hosts(ServerSettings(host="0.0.0.0"))
    s = ServerSettings(host="0.0.0.0", allowed_hosts=["mlflow.example.com:5000", "10.*"])
    assert server.allowed_hosts(s) == ["mlflow.example.com:5000", "10.*"]
    assert server.tracking_uri(s) == "http://mlflow.example.com:5000"


def test_the_command_keeps_the_password_out_of_argv(tmp_path):
    s = ServerSettings(
        backend_uri="postgresql://u:topsecret@h/db",
        artifacts_destination=str(tmp_path / "art"),
        port=5055,
        workers=3,
    )
    cmd = server.command(s)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert "topsecret" not in " ".join(cmd)
    flags = {flag: cmd[cmd.index(flag) + 1] for flag in cmd if flag.startswith("--")}
    assert flags["--host"] == "127.0.0.1"
    assert flags["--workers"] == "3"
    assert flags["--allowed-hosts"] == "127.0.0.1:5055,localhost:5055"
    assert flags["--artifacts-destination"] == str(tmp_path / "art")
    assert "--serve-artifacts" in cmd
    assert "--app-name" not in cmd
    assert server.command(s.model_copy(update={"auth": True}))[-2:] == ["--app-name", "basic-auth"]
    assert (
        server.artifacts_destination(ServerSettings(artifacts_destination="s3://b/p")) == "s3://b/p"
    )


def test_the_server_environment_turns_off_jobs_and_telemetry():
    s = ServerSettings(backend_uri="postgresql://u@h/db")
    env = server.server_env(
        s,
        {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true",
            "MLFLOW_DISABLE_TELEMETRY": "false",
            "MLFLOW_SERVER_ALLOWED_HOSTS": "*",
            "MLFLOW_AUTH_CONFIG_PATH": "/committed/basic_auth.ini",
            "HOME": "/home/x",
        },
        {"EXTRA": "1"},
    )
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://u@h/db"
    assert "MLFLOW_SERVER_ALLOWED_HOSTS" not in env
    assert "MLFLOW_AUTH_CONFIG_PATH" not in env
    assert (env["HOME"], env["EXTRA"]) == ("/home/x", "1")


def test_a_taken_port_is_refused_in_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match=f"127.0.0.1:{port}: cannot listen"):
            server.check_port_free("127.0.0.1", port)


def test_a_non_postgresql_backend_other_than_sqlite_is_refused(tmp_path):
    s = ServerSettings(backend_uri="mysql://u:pw@h/db", port=1, state_dir=str(tmp_path))
    with pytest.raises(ServerError, match=r"mysql://u:\*\*\*@h/db: the backend store must be"):
        server.prepare(s, {})


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,pid="], capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    return [pid for group, stat, pid in rows if group == str(pgid) and not stat.startswith("Z")]


def test_stop_ends_the_whole_process_group_and_removes_the_secrets(tmp_path):
    private = tmp_path / "auth-x"
    private.mkdir()
    (private / "basic_auth.ini").write_text("[mlflow]\n")
    # A parent that ignores SIGTERM with a child of its own: both must be gone.
    script = "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    script += "subprocess.Popen(['sleep', '300']); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    time.sleep(0.5)
    handle = server.Server(proc, "http://127.0.0.1:1", ServerSettings(), private_dir=private)
    handle.stop(timeout=1)
    assert proc.poll() is not None
    # The killed grandchild is reaped by init a moment later; until then pgrep lists it.
    deadline = time.monotonic() + 10
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(proc.pid) == []
    assert not private.exists()


def test_a_server_that_exits_early_is_reported_with_its_last_error(tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    monkeypatch.setattr(
        server, "command", lambda s: [sys.executable, "-c", "raise SystemExit('Error: boom')"]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = ServerSettings(
        backend_uri=f"sqlite:///{tmp_path / 'm.db'}",
        port=port,
        artifacts_destination=str(tmp_path / "art"),
        state_dir=str(tmp_path),
    )
    with pytest.raises(ServerError, match=r"exited with code 1 before answering \(Error: boom\)"):
        server.start(s, env={}, log_path=log, ready_timeout=30)
    assert Path(tmp_path / "art").is_dir()
