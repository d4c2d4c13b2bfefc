"""The shared tracking server without auth: fresh PostgreSQL database, proxied artifacts,
host checks, and the one-line error when PostgreSQL refuses connections."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory, team_server):
    folder = tmp_path_factory.mktemp("team-server")
    with team_server(folder) as srv:
        print(f"server started in {srv.started_s:.1f} s")
        yield srv


def _status(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_created_its_database_and_answers_health(server, pg):
    assert pg.exists(server.settings.backend_uri)
    assert _status(f"{server.uri}/health") == 200
    assert server.uri == f"http://127.0.0.1:{server.settings.port}"
    # Bound to loopback only.
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{server.settings.port} " in listening
    assert f"0.0.0.0:{server.settings.port} " not in listening


def test_only_the_bound_names_are_accepted_as_host(server):
    api = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    port = server.settings.port
    assert _status(api) == 200
    assert _status(api, host=f"localhost:{port}") == 200
    assert _status(api, host=f"attacker.example:{port}") == 403  # DNS rebinding refused
    assert _status(api, host="127.0.0.1:1") == 403


def test_a_run_is_stored_in_postgresql_and_its_artifact_proxied(server, tmp_path):
    import sqlalchemy as sa
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from mlplatform.team.database import with_driver

    client = MlflowClient(tracking_uri=server.uri)
    exp_id = client.create_experiment("team-e2e")
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(exp_id, run_name="first")
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric("auc", 0.81, 0, 0)], params=[Param("depth", "4")])
    note = tmp_path / "note.txt"
    note.write_text("proxied through the server\n")
    client.log_artifact(run_id, str(note), artifact_path="reports")
    client.set_terminated(run_id)

    # The artifact landed under the server's destination folder, not in the client's cwd.
    dest = server.settings.artifacts_destination
    stored = list(Path(dest).rglob("note.txt"))
    assert [p.relative_to(dest).as_posix() for p in stored] == [
        f"{exp_id}/{run_id}/artifacts/reports/note.txt"
    ]
    assert stored[0].read_text() == note.read_text()
    back = client.download_artifacts(run_id, "reports/note.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == note.read_text()

    # The run lives in the PostgreSQL backend store.
    engine = sa.create_engine(with_driver(server.settings.backend_uri), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status FROM runs WHERE run_uuid = :r"), {"r": run_id}
        ).one()
        metric = conn.execute(
            sa.text("SELECT value FROM latest_metrics WHERE run_uuid = :r AND key = 'auc'"),
            {"r": run_id},
        ).scalar_one()
    engine.dispose()
    assert row.status == "FINISHED"
    assert metric == pytest.approx(0.81)
    found = client.search_runs([exp_id], "metrics.auc > 0.8", order_by=["metrics.auc DESC"])
    assert [r.info.run_id for r in found] == [run_id]


def test_postgresql_refusing_connections_is_one_masked_line(tmp_path, pg):
    uri = "postgresql://team:hunter2-secret@127.0.0.1:1/mlflow"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlplatform.team",
            "--backend-uri",
            uri,
            "--port",
            str(pg.free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "postgresql://team:***@127.0.0.1:1/mlflow" in lines[0]
    assert "cannot connect" in lines[0]
    assert "hunter2" not in proc.stderr + proc.stdout


def test_a_second_server_on_a_taken_port_stops_with_one_line(server, tmp_path, pg):
    proc = subprocess.run(
        [
            sys.executable, "-m", "mlplatform.team",
            "--backend-uri", f"{pg.base}/unused", "--port", str(server.settings.port),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{server.settings.port}: cannot listen" in proc.stderr
    assert not pg.exists(f"{pg.base}/unused")
