"""The prediction log's cost on the request path, measured side by side in one run.

One trained model (HMDA, our preprocessing + a 300-tree XGBoost, logged by
``mlplatform.model_format``) is served twice by ``mlflow models serve`` (1 worker each,
``--env-manager local``): with ``MLPLATFORM_PREDICTION_LOG=off`` and with the log on (a
SQLite file, the local default). Both get the same requests in interleaved, shuffled
rounds: single-row requests in the ``inputs`` and ``dataframe_split`` formats, and 100-row
requests. Printed: p50 and p99 per server and the ratio on/off (target: single-row p50
ratio <= 1.10). Afterwards the log must hold every request's rows (none dropped).

    python bench/prediction_log.py [--reps 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_params
from scoring import Client, _fit_pipeline, _log_ours, _payload, _pct, _serve


def _timed(clients: dict, bodies: list[bytes], reps: int, seed: int) -> dict[str, list[float]]:
    for name in clients:  # warm-up
        for body in bodies[:20]:
            clients[name].post(body)
    rng = random.Random(seed)
    out: dict[str, list[float]] = {name: [] for name in clients}
    for i in range(reps):
        order = list(clients)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            clients[name].post(bodies[i % len(bodies)])
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    import mlflow

    from mlplatform.config import Paths
    from mlplatform.data import ingest, prepare
    from mlplatform.data.dataset import load_split
    from mlplatform.monitoring import prediction_log as pl

    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2000, help="requests per server per format")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-predlog-"))
    params = bench_params(workdir, {})
    paths = Paths(workdir)
    ingest.run(params, paths)
    prepare.run(params, paths)
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    mlflow.set_experiment("bench-prediction-log")
    schema, fitted, valid = _fit_pipeline(params, paths)
    uri = _log_ours(schema, fitted, valid)
    test = load_split(paths, "test")[schema.feature_names]
    url = f"sqlite:///{workdir / 'predictions.db'}"
    servers = {}
    try:
        servers["off"] = _serve(uri, workdir, "serve-off", {"MLPLATFORM_PREDICTION_LOG": "off"})
        servers["on"] = _serve(uri, workdir, "serve-on", {"MLPLATFORM_PREDICTION_LOG": url})
        clients = {name: Client(port) for name, (_, port) in servers.items()}
        cases = {
            "1 row, inputs": [_payload(test.iloc[[i]], "inputs") for i in range(200)],
            "1 row, dataframe_split": [_payload(test.iloc[[i]]) for i in range(200)],
            "100 rows, dataframe_split": [
                _payload(test.iloc[i : i + 100]) for i in range(0, 300, 50)
            ],
        }
        results, sent = {}, 0
        for k, (case, bodies) in enumerate(cases.items()):
            reps = args.reps if case.startswith("1 row") else max(args.reps // 4, 100)
            lat = _timed(clients, bodies, reps, seed=k)
            rows = 1 if case.startswith("1 row") else 100
            sent += (reps + min(20, len(bodies))) * rows  # with the warm-up
            results[case] = {
                name: {"p50": statistics.median(xs), "p99": _pct(xs, 0.99)}
                for name, xs in lat.items()
            }
        deadline = time.time() + 60
        while time.time() < deadline and len(pl.read_window(url)) < sent:
            time.sleep(0.5)
        logged = len(pl.read_window(url))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=30)
    print(f"{'request':28} {'off p50':>8} {'on p50':>8} {'ratio':>6} {'off p99':>8} {'on p99':>8}")
    for case, r in results.items():
        off, on = r["off"], r["on"]
        print(
            f"{case:28} {off['p50']:8.2f} {on['p50']:8.2f} {on['p50'] / off['p50']:6.3f} "
            f"{off['p99']:8.2f} {on['p99']:8.2f}"
        )
    print(f"rows sent to the logging server: {sent:,}; rows in the log: {logged:,}")
    ratio = results["1 row, inputs"]["on"]["p50"] / results["1 row, inputs"]["off"]["p50"]
    print(json.dumps({"single_row_p50_ratio": round(ratio, 3), "target": 1.10}))
    sys.exit(0 if logged == sent else 1)


if __name__ == "__main__":
    main()
