"""Registry layer (registry.py) on a real MLflow sqlite store, plus the promotion lock."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
import warnings
from pathlib import Path

import pytest

from mlplatform import locks, postgres
from mlplatform.errors import RegistryError
from mlplatform.registry import audit, versions
from mlplatform.search import storage
from support.mlflow_store import new_client

FORK = mp.get_context("fork")
PG_URIS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


@pytest.fixture
def client(tmp_path):
    return new_client(tmp_path)


def _record(action: str = "promote", **kw) -> dict:
    return {
        "action": action,
        "model_name": "m",
        "version": "1",
        "decision": "approve",
        "reason": "because",
        "actor": "alice",
        "champion_before": None,
        "champion_after": "1",
        **kw,
    }


# --------------------------------------------------------------------------------------
# The audit history.


def test_append_numbers_records_and_history_returns_them_in_order(client):
    assert audit.history(client, "m") == []
    written = [
        audit.append(client, "m", _record(version="1", champion_after="1")),
        audit.append(
            client,
            "m",
            _record(version="2", decision="review", champion_before="1", champion_after="1"),
        ),
        audit.append(
            client,
            "m",
            _record(
                "review",
                version="2",
                actor="bob",
                champion_before="1",
                champion_after="2",
                when="2024-01-02T03:04:05.000000Z",
            ),
        ),
    ]
    assert [r["seq"] for r in written] == [1, 2, 3]
    assert written[2]["when"] == "2024-01-02T03:04:05.000000Z"  # a given time is kept
    assert written[0]["when"].endswith("Z") and "T" in written[0]["when"]
    got = audit.history(client, "m")
    assert got == written
    assert set(got[0]) == set(_record()) | {"seq", "when"}
    # Queryable tags on each audit run; the experiment is flagged as the audit trail.
    exp = client.get_experiment_by_name(audit.audit_experiment_name("m"))
    assert exp.tags[audit.AUDIT_TAG] == "true"
    runs = client.search_runs([exp.experiment_id], order_by=["tags.seq ASC"])
    assert [r.data.tags["seq"] for r in runs] == ["1", "2", "3"]
    assert [r.data.tags["action"] for r in runs] == ["promote", "promote", "review"]
    assert runs[2].data.tags["actor"] == "bob"
    assert runs[1].data.tags["decision"] == "review"
    assert all(r.info.status == "FINISHED" for r in runs)
    # Another model's history is separate.
    assert audit.history(client, "other") == []


def test_long_rules_go_to_the_artifact_and_still_round_trip(client, tmp_path):
    rules = [
        {"name": f"rule-{i}", "outcome": "pass", "detail": "x" * 200, "value": i, "limit": None}
        for i in range(60)
    ]
    assert len(json.dumps(rules)) > 8000
    audit.append(client, "m", _record())
    written = audit.append(client, "m", _record(version="2", rules=rules))
    assert written["seq"] == 2
    assert written["rules"] == rules
    got = audit.history(client, "m")
    assert [r["seq"] for r in got] == [1, 2]
    small = got[1]
    assert small["shortened"] is True
    assert "rules" not in small
    assert {k: v for k, v in written.items() if k != "rules"} == {
        k: v for k, v in small.items() if k != "shortened"
    }
    exp = client.get_experiment_by_name(audit.audit_experiment_name("m"))
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags["seq"] == "2")
    assert len(run.data.tags["record"]) <= 8000
    (tmp_path / "dl").mkdir()
    path = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path / "dl"))
    assert json.loads(Path(path).read_text()) == written
    # A third record still gets the next number.
    assert audit.append(client, "m", _record(version="3"))["seq"] == 3


def test_deleted_audit_record_leaves_a_gap_not_a_reused_number(client):
    for v in ("1", "2", "3"):
        audit.append(client, "m", _record(version=v))
    exp = client.get_experiment_by_name(audit.audit_experiment_name("m"))
    third = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags["seq"] == "3")
    client.delete_run(third.info.run_id)
    assert audit.append(client, "m", _record(version="4"))["seq"] == 4
    assert [r["seq"] for r in audit.history(client, "m")] == [1, 2, 4]


def test_record_with_long_reason_is_kept_in_history(client):
    audit.append(client, "m", _record("review", reason="r" * 9000))
    audit.append(client, "m", _record())
    assert [r["seq"] for r in audit.history(client, "m")] == [1, 2]


def test_approvals_for_picks_records_involving_the_version():
    def rec(action, version, decision, before, after, day, **kw):
        when = f"2024-01-0{day}T10:00:00.123456Z"
        return _record(
            action,
            version=version,
            decision=decision,
            champion_before=before,
            champion_after=after,
            when=when,
            **kw,
        )

    records = [
        rec("promote", "1", "approve", None, "1", 1),
        rec("promote", "2", "review", "1", "1", 2),
        rec("review", "2", "approve", "1", "2", 3, reason="ok " * 100),
        rec("rollback", "1", "approve", "2", "1", 4),
        rec("promote", "3", "reject", "1", "1", 5, reason=None),
        rec("promote", "4", "reject", "2", "2", 6),
    ]
    rows = audit.approvals_for(records, "2")
    assert [r["when"] for r in rows] == [
        "2024-01-02 10:00:00",
        "2024-01-03 10:00:00",
        "2024-01-04 10:00:00",
        "2024-01-06 10:00:00",
    ]
    assert set(rows[0]) == {"when", "action", "version", "decision", "actor", "reason"}
    assert rows[1]["action"] == "review" and rows[1]["version"] == "2"
    assert len(rows[1]["reason"]) == 200
    assert [r["when"][:10] for r in audit.approvals_for(records, 1)] == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ]
    assert audit.approvals_for(records, "3")[0]["reason"] == ""
    assert audit.approvals_for(records, "9") == []
    assert audit.approvals_for([], "1") == []


# --------------------------------------------------------------------------------------
# Versions and aliases.


def _three_versions(client, tmp_path, name="m"):
    source = tmp_path / "model"
    source.mkdir()
    versions.ensure_registered_model(client, name)
    versions.ensure_registered_model(client, name)  # idempotent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [str(client.create_model_version(name, str(source)).version) for _ in range(3)]


def _stage(client, name, version):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return client.get_model_version(name, version).current_stage


def test_set_alias_and_aliases(client, tmp_path):
    assert _three_versions(client, tmp_path) == ["1", "2", "3"]
    assert versions.aliases(client, "m") == {}
    versions.set_alias(client, "m", versions.CHAMPION, "1", mirror=False)
    versions.set_alias(client, "m", versions.CHALLENGER, 2, mirror=False)
    versions.set_alias(client, "m", versions.PREVIOUS, "3", mirror=False)
    assert versions.aliases(client, "m") == {
        "champion": "1",
        "challenger": "2",
        "previous-champion": "3",
    }
    assert versions.alias_version(client, "m", "champion") == "1"
    # Without mirroring the deprecated stages stay untouched.
    assert _stage(client, "m", "1") == "None"
    # Move one, remove one; removing an unset alias is a no-op.
    versions.set_alias(client, "m", versions.CHAMPION, "3", mirror=False)
    versions.set_alias(client, "m", versions.CHALLENGER, None, mirror=False)
    versions.set_alias(client, "m", versions.CHALLENGER, None, mirror=False)
    assert versions.aliases(client, "m") == {"champion": "3", "previous-champion": "3"}
    assert versions.alias_version(client, "m", "challenger") is None
    assert versions.alias_version(client, "no-such-model", "champion") is None


def test_set_alias_mirror_moves_stages(client, tmp_path):
    _three_versions(client, tmp_path)
    versions.set_alias(client, "m", versions.CHAMPION, "1", mirror=True)
    versions.set_alias(client, "m", versions.CHALLENGER, "2", mirror=True)
    versions.set_alias(client, "m", versions.PREVIOUS, "3", mirror=True)
    assert _stage(client, "m", "1") == "Production"
    assert _stage(client, "m", "2") == "Staging"
    assert _stage(client, "m", "3") == "None"  # previous-champion has no stage
    versions.archive_stage(client, "m", "1", mirror=False)
    assert _stage(client, "m", "1") == "Production"
    versions.archive_stage(client, "m", "1", mirror=True)
    assert _stage(client, "m", "1") == "Archived"
    assert versions.aliases(client, "m")["champion"] == "1"


def test_get_version_and_tags(client, tmp_path):
    _three_versions(client, tmp_path)
    assert str(versions.get_version(client, "m", 2).version) == "2"
    with pytest.raises(RegistryError, match="registered model 'm' has no version 7"):
        versions.get_version(client, "m", "7")
    versions.tag_version(client, "m", "1", {"a": "text", "b": {"x": 1}, "c": "y" * 6000})
    tags = client.get_model_version("m", "1").tags
    assert tags["a"] == "text"
    assert json.loads(tags["b"]) == {"x": 1}
    assert len(tags["c"]) == versions.MAX_TAG


# --------------------------------------------------------------------------------------
# The lock.


def _critical(uri: str, name: str, state: str, log: str, go, hold_s: float) -> None:
    go.wait(10)
    with locks.registry_lock(uri, name, Path(state), timeout_s=20):
        start = time.time()
        time.sleep(hold_s)
        end = time.time()
        with open(log, "a") as fh:
            fh.write(f"{start} {end}\n")
            fh.flush()


def _hold(uri: str, name: str, state: str, held, release) -> None:
    with locks.registry_lock(uri, name, Path(state), timeout_s=20):
        held.set()
        release.wait(20)


def _assert_serialised(uri: str, name: str, tmp_path: Path, hold_s: float = 0.3) -> None:
    log = tmp_path / f"intervals-{uuid.uuid4().hex}.txt"
    go = FORK.Event()
    procs = [
        FORK.Process(target=_critical, args=(uri, name, str(tmp_path), str(log), go, hold_s))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    intervals = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(intervals) == 2
    (s1, e1), (s2, e2) = intervals
    assert e1 - s1 >= hold_s and e2 - s2 >= hold_s
    assert e1 <= s2, f"critical sections overlap: {intervals}"


def _assert_held_lock_times_out(uri: str, name: str, tmp_path: Path) -> None:
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(uri, name, str(tmp_path), held, release))
    holder.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        with (
            pytest.raises(RegistryError, match=f"registered model '{name}'"),
            locks.registry_lock(uri, name, tmp_path, timeout_s=0.2),
        ):
            pass
        assert time.monotonic() - t0 < 5
        # Another model is not blocked.
        with locks.registry_lock(uri, f"{name}-other", tmp_path, timeout_s=1):
            pass
    finally:
        release.set()
        holder.join(20)
    assert holder.exitcode == 0
    # Released: it can be taken again.
    with locks.registry_lock(uri, name, tmp_path, timeout_s=5):
        pass


def test_sqlite_lock_serialises_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _assert_serialised(uri, "m", tmp_path)
    assert (tmp_path / "mlflow.db.m.lock").exists()


def test_sqlite_lock_held_elsewhere_times_out(tmp_path):
    _assert_held_lock_times_out(f"sqlite:///{tmp_path / 'mlflow.db'}", "m", tmp_path)


def test_sqlite_lock_zero_timeout_fails_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(uri, "m", str(tmp_path), held, release))
    holder.start()
    try:
        assert held.wait(10)
        with (
            pytest.raises(RegistryError, match="another registry change holds"),
            locks.registry_lock(uri, "m", tmp_path, timeout_s=0),
        ):
            pass
    finally:
        release.set()
        holder.join(20)


def test_remote_uri_lock_lives_in_state_dir_per_registry(tmp_path):
    state = tmp_path / "state"
    with locks.registry_lock("http://tracking.invalid:5000", "m", state, timeout_s=1):
        first = list(state.glob("registry-*-m.lock"))
    with locks.registry_lock("http://other.invalid:5000", "m", state, timeout_s=1):
        both = list(state.glob("registry-*-m.lock"))
    assert len(first) == 1 and len(both) == 2


def test_relative_sqlite_uri_locks_the_same_file_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    held, release = FORK.Event(), FORK.Event()
    args = ("sqlite:///mlflow.db", "m", str(tmp_path / "state"), held, release)
    holder = FORK.Process(target=_hold, args=args)
    holder.start()
    try:
        assert held.wait(10)
        assert (tmp_path / "mlflow.db.m.lock").exists()
        monkeypatch.chdir(tmp_path / "..")
        # The same store named by its absolute path, from elsewhere, is the same lock.
        with (
            pytest.raises(RegistryError, match="another registry change holds"),
            locks.registry_lock(f"sqlite:///{tmp_path}/mlflow.db", "m", tmp_path, timeout_s=0),
        ):
            pass
    finally:
        release.set()
        holder.join(20)


@pytest.fixture(scope="module")
def pg_uri() -> str:
    psycopg2 = pytest.importorskip("psycopg2")
    errors = []
    for uri in PG_URIS:
        try:
            conn = postgres.pg_connect(uri + "?connect_timeout=3")
        except (psycopg2.OperationalError, RegistryError) as exc:
            errors.append(f"{uri}: {str(exc).strip().splitlines()[0]}")
            continue
        conn.close()
        return uri
    pytest.skip("no PostgreSQL reachable for the advisory-lock tests: " + "; ".join(errors))


def test_pg_connect_passes_url_query_options(pg_uri):
    conn = postgres.pg_connect(pg_uri + "?application_name=mlplatform-test&connect_timeout=3")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW application_name")
            assert cur.fetchone()[0] == "mlplatform-test"
    finally:
        conn.close()


def test_postgres_lock_survives_a_server_idle_session_timeout(pg_uri, tmp_path):
    """A server that ends idle sessions after 300 ms (set here through the URL) must not end
    the lock's session while the work runs."""
    key = f"m-{uuid.uuid4().hex}"
    strict = pg_uri + "?options=-c%20idle_session_timeout%3D300"
    with locks.pg_advisory_lock(strict, key, 5, "busy"):
        time.sleep(1.0)
        with (
            pytest.raises(RegistryError, match="still held"),
            locks.pg_advisory_lock(pg_uri, key, 0, "still held"),
        ):
            pass


def test_lock_session_is_probed_by_the_server(pg_uri):
    conn = postgres.pg_connect(pg_uri + "?connect_timeout=3")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            locks._keep_lock_session(cur)
            shown = {}
            for name in ("idle_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_count"):
                cur.execute(f"SHOW {name}")
                shown[name] = cur.fetchone()[0]
    finally:
        conn.close()
    assert shown["idle_session_timeout"] == "0"
    assert shown["tcp_keepalives_idle"] == "60"  # PG_URIS are TCP: keepalives apply
    assert shown["tcp_keepalives_count"] == "6"


def test_postgres_lock_serialises_processes(pg_uri, tmp_path):
    _assert_serialised(pg_uri, f"m-{uuid.uuid4().hex}", tmp_path)


def test_postgres_lock_held_elsewhere_times_out(pg_uri, tmp_path):
    _assert_held_lock_times_out(pg_uri, f"m-{uuid.uuid4().hex}", tmp_path)


def _try_lock(uri: str, name: str, state: str, timeout_s: float, result) -> None:
    try:
        with locks.registry_lock(uri, name, Path(state), timeout_s=timeout_s):
            result.put("acquired")
    except RegistryError:
        result.put("RegistryError")


def test_postgres_lock_zero_timeout_fails_fast(pg_uri, tmp_path):
    name = f"m-{uuid.uuid4().hex}"
    held, release, result = FORK.Event(), FORK.Event(), FORK.Queue()
    holder = FORK.Process(target=_hold, args=(pg_uri, name, str(tmp_path), held, release))
    holder.start()
    waiter = None
    try:
        assert held.wait(10)
        waiter = FORK.Process(target=_try_lock, args=(pg_uri, name, str(tmp_path), 0, result))
        waiter.start()
        waiter.join(2)
        alive = waiter.is_alive()
        if alive:
            waiter.terminate()
            waiter.join(5)
        assert not alive, "lock(timeout_s=0) still waiting after 2 s"
        assert result.get(timeout=1) == "RegistryError"
    finally:
        release.set()
        holder.join(20)


def _hold_study(uri: str, study: str, held, release) -> None:
    import os

    os.environ["MLPLATFORM_OPTUNA_STORAGE"] = uri
    with storage.shared_study_lock(study):
        held.set()
        release.wait(20)


def test_shared_postgres_study_is_driven_by_one_tune(pg_uri, monkeypatch):

    study = f"s-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLPLATFORM_OPTUNA_STORAGE", pg_uri)
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_study, args=(pg_uri, study, held, release))
    holder.start()
    try:
        assert held.wait(10)
        with (
            pytest.raises(RegistryError, match=f"Optuna study '{study}': another tune"),
            storage.shared_study_lock(study),
        ):
            pass
        with storage.shared_study_lock(f"{study}-other"):  # other studies are not blocked
            pass
    finally:
        release.set()
        holder.join(20)
    with storage.shared_study_lock(study):  # released with its holder
        pass


def test_unreachable_postgres_is_a_one_line_registry_error():
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1:1/x\?connect_timeout=2: cannot") as err:
        postgres.pg_connect("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2")
    assert "secret" not in str(err.value)
