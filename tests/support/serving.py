"""A real `mlflow models serve` process on a free port, as the README starts it."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.project import BIN, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(
    model_uri: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 120
) -> Iterator[int]:
    """Serve a model with `mlflow models serve --env-manager local`; yield its port.

    The server's output goes to ``cwd/serve-<port>.log`` (shown when it fails to start).
    """
    port = free_port()
    log_path = Path(cwd) / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=cwd,
            env=cli_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(log_path.read_text()[-3000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("server did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def post(port: int, body: str | bytes, content_type: str = "application/json"):
    """POST to /invocations; (status, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/invocations", body, {"Content-Type": content_type})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def invoke(port: int, payload: dict[str, Any]) -> tuple[int, Any]:
    """POST a JSON payload; (status, decoded answer or text)."""
    status, text = post(port, json.dumps(payload))
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text
