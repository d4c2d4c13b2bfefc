"""``mlplatform server``: the shared MLflow tracking server of team mode.

It runs ``mlflow server`` with

- a PostgreSQL backend store (the database is created if missing); the URI travels in the
  server's environment, not on its command line, so a password in it never shows in ``ps``;
- proxied artifacts (``--serve-artifacts``, ``--artifacts-destination``): clients need no
  access to the artifact store, only to the server;
- the job runner off (it starts huey workers of about 2.4 GB) and telemetry off;
- loopback by default, with ``--allowed-hosts`` naming exactly the bound address (MLflow
  compares the whole Host header, port included), so DNS rebinding is refused;
- optionally MLflow's basic-auth app (see ``auth``).

``start`` returns a handle once ``/health`` answers; ``serve`` is the foreground command.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mlplatform.team import auth
from mlplatform.team.database import ensure_database, is_postgres, masked, with_driver
from mlplatform.team.settings import ServerError, ServerSettings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"127.0.0.1": ("127.0.0.1", "localhost"), "localhost": ("127.0.0.1", "localhost")}
WILDCARD = {"0.0.0.0", "::", ""}
# Set for the server whatever the caller's environment says.
FORCED_ENV = {
    # The job runner's huey workers cost about 2.4 GB RSS; nothing here submits jobs.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
# Variables MLflow would read instead of what this module passes.
SHADOWED_ENV = ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_TRACKING_URI")


def _bracketed(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def allowed_hosts(settings: ServerSettings) -> list[str]:
    """The Host headers the server accepts: the given list, else the bound address's names.

    Raises:
        ServerError: the server binds every interface and no list was given (there is no
            single name clients would use).
    """
    if settings.allowed_hosts:
        return list(settings.allowed_hosts)
    if settings.host in WILDCARD:
        raise ServerError(
            f"--host {settings.host or '0.0.0.0'} listens on every interface: name the Host "
            f"headers to accept with --allowed-hosts (e.g. mlflow.example.com:{settings.port})"
        )
    names = LOOPBACK_NAMES.get(settings.host, (_bracketed(settings.host),))
    hosts = [f"{name}:{settings.port}" for name in names]
    if settings.port == 80:  # browsers leave the default port out of the Host header
        hosts += list(names)
    return hosts


def tracking_uri(settings: ServerSettings) -> str:
    """The URI clients export as MLFLOW_TRACKING_URI."""
    if settings.host in WILDCARD:
        named = [h for h in allowed_hosts(settings) if "*" not in h]
        if named:
            host = named[0] if ":" in named[0] else f"{named[0]}:{settings.port}"
            return f"http://{host}"
        return f"http://127.0.0.1:{settings.port}"
    return f"http://{_bracketed(settings.host)}:{settings.port}"


def _local_uri(settings: ServerSettings) -> str:
    """Where this machine reaches the server (a wildcard bind answers on loopback)."""
    host = "127.0.0.1" if settings.host in WILDCARD else _bracketed(settings.host)
    return f"http://{host}:{settings.port}"


def artifacts_destination(settings: ServerSettings) -> str:
    """An object-store URI as given; a local folder made absolute."""
    dest = settings.artifacts_destination
    return dest if "://" in dest else str(Path(dest).resolve())


def command(settings: ServerSettings) -> list[str]:
    """The ``mlflow server`` command line (the backend URI goes through the environment)."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host or "0.0.0.0",
        "--port", str(settings.port),
        "--workers", str(settings.workers),
        "--serve-artifacts",
        "--artifacts-destination", artifacts_destination(settings),
        "--allowed-hosts", ",".join(allowed_hosts(settings)),
    ]  # fmt: skip
    if settings.auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def server_env(
    settings: ServerSettings, env: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The server process's environment: the caller's, minus what would shadow ours."""
    out = {k: v for k, v in env.items() if k not in SHADOWED_ENV}
    out.update(FORCED_ENV)
    out["MLFLOW_BACKEND_STORE_URI"] = with_driver(settings.backend_uri)
    out["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    out.update(extra or {})
    return out


def check_port_free(host: str, port: int) -> None:
    """Raises ServerError when something already listens on host:port."""
    probe = "127.0.0.1" if host in WILDCARD else host
    family = socket.AF_INET6 if ":" in probe else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Like uvicorn: a port left in TIME_WAIT by a stopped server is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((probe, port))
        except OSError as exc:
            raise ServerError(
                f"{host}:{port}: cannot listen ({exc.strerror}); is another server running? "
                "Choose another --port"
            ) from None


@dataclass
class Server:
    """A running tracking server (its own process group)."""

    proc: subprocess.Popen
    uri: str
    settings: ServerSettings
    log_path: Path | None = None
    private_dir: Path | None = None
    started_s: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server and its workers (the whole process group); remove its secrets."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            # The workers shut down gracefully at once; the ``mlflow server`` process that
            # only waits for them then takes about 5 s more to exit. Once it is alone in
            # its group there is nothing left to shut down gracefully.
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                if _group_members(self.proc.pid) <= {self.proc.pid}:
                    break
                time.sleep(0.05)
        # Workers can outlive the supervisor by a moment: end the group in any case.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return self.proc.returncode


def _group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of a process group, from /proc (Linux); elsewhere
    the leader only, so ``stop`` waits for it as usual."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command name (which may hold spaces): state, ppid, pgrp.
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.add(int(stat.parent.name))
    if not Path("/proc/self/stat").exists():
        members = {pgid, -1}  # unknown: keep waiting for the leader
    return members


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the starting process dies (Linux), so a killed
    ``mlplatform server`` or test run leaves no server behind; mlflow forwards it on."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _health(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return "see its output above"
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Error" in ln or "error" in ln] or lines
    return useful[-1][:300] if useful else "no output"


def prepare(settings: ServerSettings, env: Mapping[str, str]) -> tuple[dict, Path | None]:
    """Everything before the process starts: port, database, artifacts folder, auth.

    Returns:
        (extra environment for the server, private folder to remove after it stops).

    Raises:
        ServerError: the port is taken, PostgreSQL refuses connections (one line, the URI
            with its password masked), or basic auth lacks its password.
    """
    allowed_hosts(settings)  # a wildcard bind without --allowed-hosts fails before anything
    check_port_free(settings.host, settings.port)
    if settings.auth:  # before anything is created
        auth.check_password(env)
    if is_postgres(settings.backend_uri):
        ensure_database(settings.backend_uri)
    elif not settings.backend_uri.startswith("sqlite:"):
        raise ServerError(
            f"{masked(settings.backend_uri)}: the backend store must be PostgreSQL "
            "(postgresql://user@host:5432/db) or a sqlite:/// file"
        )
    dest = artifacts_destination(settings)
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
    if not settings.auth:
        return {}, None
    return auth.prepare(settings, env)


def start(
    settings: ServerSettings,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 180.0,
) -> Server:
    """Start the tracking server and wait until it answers ``/health``.

    Args:
        env: the environment to start from (``os.environ`` when None).
        log_path: the server's output goes there; None = this process's stdout/stderr.
        ready_timeout: seconds to wait for the first answer (a fresh PostgreSQL database
            is migrated first: about 5 s here).

    Raises:
        ServerError: see ``prepare``; or the server exited or did not answer in time.
    """
    env = dict(os.environ if env is None else env)
    t0 = time.perf_counter()
    extra, private = prepare(settings, env)
    out: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - closed by Server.stop
    try:
        proc = subprocess.Popen(
            command(settings),
            env=server_env(settings, env, extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # its own process group: stop() ends the workers too
            preexec_fn=_die_with_parent,  # prctl only: safe between fork and exec
        )
    except OSError:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        raise
    server = Server(proc, tracking_uri(settings), settings, log_path, private, _log=out)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:  # also Ctrl-C while it starts: leave nothing running
        server.stop()
        raise
    server.started_s = time.perf_counter() - t0
    if settings.auth:
        _check_admin_login(
            _local_uri(settings), auth.admin_username(settings, env), env[auth.PASSWORD_VAR]
        )
    return server


def _wait_ready(server: Server, timeout: float) -> None:
    local = _local_uri(server.settings)
    deadline = time.monotonic() + timeout
    while not _health(local):
        if not server.alive():
            raise ServerError(
                f"mlflow server exited with code {server.proc.returncode} before answering "
                f"({_last_line(server.log_path)})"
            )
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer {local}/health in {timeout} s")
        time.sleep(0.1)


def _check_admin_login(uri: str, username: str, password: str) -> None:
    """Warn when the admin password in the environment is not the stored one (MLflow uses
    it only to create the admin in an empty auth store, and ignores it afterwards)."""
    token = b64encode(f"{username}:{password}".encode()).decode()
    req = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/users/get?username={username}",
        headers={"Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            log.warning(
                "%s does not match the stored password of admin '%s' (it only sets the "
                "password when the auth store is first created)",
                auth.PASSWORD_VAR,
                username,
            )
    except (urllib.error.URLError, OSError):
        return


def banner(server: Server, env: Mapping[str, str]) -> list[str]:
    """What ``serve`` prints once the server answers."""
    s = server.settings
    lines = [
        f"MLflow tracking server on {server.uri} (backend {masked(with_driver(s.backend_uri))}, "
        f"artifacts {artifacts_destination(s)}, {s.workers} workers, "
        f"basic auth {'on' if s.auth else 'off'}; started in {server.started_s:.1f} s)",
        f"export MLFLOW_TRACKING_URI={server.uri}",
    ]
    if s.auth:
        lines.append(
            f"export MLFLOW_TRACKING_USERNAME={auth.admin_username(s, env)}  "
            "# and MLFLOW_TRACKING_PASSWORD (never printed)"
        )
    return lines


def serve(settings: ServerSettings, env: Mapping[str, str] | None = None) -> int:
    """Run the server in the foreground until it exits or this process is interrupted.

    Returns:
        The server's exit code (0 after Ctrl-C or SIGTERM).

    Raises:
        ServerError: it cannot start (see ``start``).
    """
    env = dict(os.environ if env is None else env)
    server = start(settings, env)
    for line in banner(server, env):
        print(line, flush=True)

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return server.proc.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
