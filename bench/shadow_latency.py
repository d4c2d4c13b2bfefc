"""What a shadow deployment adds to the champion's answer time, measured side by side.

Starts the real ``mlflow models serve`` four times from one project (the champion alone,
and the shadow deployment with a healthy, a raising and a 2-second-sleeping challenger,
the prediction log on) and sends the same single-row requests to each in shuffled rounds,
so machine load falls on all of them alike. Prints p50/p99 per server and the added
latency against the champion alone.

Usage (in a project whose champion and a second version exist)::

    mlplatform deploy shadow --challenger 2
    python bench/shadow_latency.py --project . --requests 400
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(uri: str, project: Path, env: dict[str, str]):
    port = _port()
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=project, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(400):
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ping")
                if c.getresponse().status == 200:
                    break
            time.sleep(0.3)
        yield http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def once(conn: http.client.HTTPConnection, body: str) -> float:
    start = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--name", default="credit-risk")
    args = ap.parse_args()
    project = args.project.resolve()
    import pandas as pd

    test = pd.read_parquet(project / "data/prepared/test.parquet")
    target = json.loads((project / "data/prepared/schema.json").read_text())["target"]
    records = json.loads(test.drop(columns=[target]).to_json(orient="records"))
    bodies = [json.dumps({"dataframe_records": [r]}) for r in records]
    bodies = [bodies[i % len(bodies)] for i in range(args.requests)]
    base = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    logged = {**base, "MLPLATFORM_PREDICTION_LOG": f"sqlite:///{project / 'bench-predictions.db'}"}
    servers = {
        "champion alone": (f"models:/{args.name}@champion", base),
        "shadow, log off": (f"models:/{args.name}@shadow", base),
        "shadow": (f"models:/{args.name}@shadow", logged),
        "shadow, challenger raises": (
            f"models:/{args.name}@shadow", {**logged, "MLPLATFORM_SHADOW_FAULT": "raise"}),
        "shadow, challenger sleeps 2 s": (
            f"models:/{args.name}@shadow", {**logged, "MLPLATFORM_SHADOW_FAULT": "sleep:2000"}),
    }  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in servers}
    with contextlib.ExitStack() as stack:
        conns = {k: stack.enter_context(serve(u, project, e)) for k, (u, e) in servers.items()}
        for conn in conns.values():  # warm up
            for b in bodies[:20]:
                once(conn, b)
        order = list(conns)
        for b in bodies:
            random.shuffle(order)
            for k in order:
                times[k].append(once(conns[k], b))
    ref = statistics.median(times["champion alone"])
    print(f"{args.requests} single-row requests per server, shuffled rounds, 1 uvicorn worker")
    print(f"{'server':32} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 added':>10} {'ratio':>6}")
    for k, t in times.items():
        t = sorted(t)
        p50, p99 = statistics.median(t), t[int(0.99 * (len(t) - 1))]
        print(f"{k:32} {p50:8.2f} {p99:8.2f} {t[-1]:8.1f} {p50 - ref:+10.2f} {p50 / ref:6.2f}")


if __name__ == "__main__":
    main()
