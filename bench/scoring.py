"""Scoring speed, measured side by side in one run, printed as ratios.

Live: one trained pipeline (one-hot encoding + 300-tree XGBoost on LendingClub's raw
columns) is logged twice, our way (``mlplatform.model_format``) and the stock way
(``mlflow.sklearn`` with ``pyfunc_predict_fn="predict_proba"``), and both are served by
``mlflow models serve`` (1 worker each, ``--env-manager local``). Requests alternate between
the two servers: median and p99 latency for 1-row and 100-row requests, then requests per
second with 4 concurrent clients. The floor is the model's raw in-process predict
(``Booster.inplace_predict`` on the encoded rows). Predictions are checked identical to the
training pipeline's on every test row.

Batch: ``mlplatform score`` on synthetic card-fraud data (1M rows, Parquet) against one
in-process pyfunc ``predict`` call over the same rows held in memory; peak memory of each,
and of ``mlplatform score`` on a quarter of the rows (it must not grow with the input).

    python bench/scoring.py [--skip-live] [--skip-batch] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common import ROOT, bench_params

BIN = Path(sys.executable).parent
warnings.filterwarnings("ignore")
logging.disable(logging.INFO)


def _fit_pipeline(params, paths, n_estimators=300, max_depth=6, sample=None):
    """One pipeline: our preprocessing (one-hot + imputation) and a 300-tree XGBoost."""
    from mlplatform import train
    from mlplatform.prepare import load_schema, load_split

    schema = load_schema(paths)
    tr, va = load_split(paths, "train"), load_split(paths, "validation")
    if sample:
        tr = tr.sample(n=min(sample, len(tr)), random_state=0)
    hp = {"n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": 0.1}
    return schema, train.fit(params, schema, tr, va, "xgboost", hp), va


def _log_ours(schema, fitted, valid):
    import mlflow

    from mlplatform import train

    with mlflow.start_run(run_name="bench-ours"):
        info = train.log_model(
            fitted, schema, valid[schema.feature_names].head(5), valid[schema.feature_names]
        )
    return info.model_uri


def _log_stock(schema, fitted, train_raw):
    """The stock way: the sklearn pipeline itself, mlflow.sklearn, predict_proba."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("pre", fitted.preprocessor), ("model", fitted.estimator)])
    x = train_raw[schema.feature_names]
    with mlflow.start_run(run_name="bench-stock"):
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            signature=infer_signature(x, pipe.predict_proba(x.head(50))),
            input_example=x.head(5),
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=[
                "xgboost.core.Booster",
                "xgboost.sklearn.XGBClassifier",
                "numpy.dtype",
            ],
            pip_requirements=[
                "mlflow==3.17.2",
                "scikit-learn==1.9.1",
                "xgboost-cpu==3.2.0",
                "skops==0.16.0",
            ],
        )
    return info.model_uri, pipe


# --------------------------------------------------------------------------------------
# Serving.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(uri: str, workdir: Path, log_name: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(workdir / f"{log_name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server for {uri} did not start; see {workdir / log_name}.log")


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: bytes) -> dict:
        self.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)


def _payload(rows: pd.DataFrame) -> bytes:
    return json.dumps(
        {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    ).encode()


def _throughput_worker(port: int, bodies: list[bytes], seconds: float, out) -> None:
    client = Client(port)
    n, end, i = 0, time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        client.post(bodies[i % len(bodies)])
        n, i = n + 1, i + 1
    out.put(n)


def throughput(port: int, bodies: list[bytes], clients: int = 4, seconds: float = 8.0) -> float:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_throughput_worker, args=(port, bodies, seconds, q))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def live(args, workdir: Path) -> dict:
    import mlflow

    from mlplatform import ingest, model_format, prepare
    from mlplatform.config import Paths

    params = bench_params(
        workdir,
        {
            "data.source": "lending_club",
            "data.target": "Class",
            "data.positive_class": "bad",
            "data.sensitive_features": [],
            "data.slice_columns": [],
        },
    )
    paths = Paths(workdir)
    ingest.run(params, paths)
    prepare.run(params, paths)
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    mlflow.set_experiment("bench-scoring")
    schema, fitted, valid = _fit_pipeline(params, paths)
    from mlplatform.prepare import load_split

    train_raw, test = load_split(paths, "train"), load_split(paths, "test")
    ours_uri = _log_ours(schema, fitted, valid)
    stock_uri, pipe = _log_stock(schema, fitted, train_raw)

    # Predictions identical to the training pipeline's, on every test row.
    ours_model = mlflow.pyfunc.load_model(ours_uri)
    x_test = test[schema.feature_names]
    out = ours_model.predict(x_test)
    cols = [model_format.probability_column(c) for c in schema.classes]
    expected = pipe.predict_proba(x_test)
    identical = bool(np.array_equal(out[cols].to_numpy(), expected.astype(np.float64)))
    labels = np.asarray(schema.classes, dtype=object)[
        (expected[:, 1] >= fitted.threshold).astype(int)
    ]
    same_labels = bool((out["prediction"].to_numpy() == labels).all())

    # The floor: the booster's own arithmetic on already-encoded rows.
    impl = ours_model._model_impl
    enc1, _ = impl.transform(x_test.iloc[:1])
    enc100, _ = impl.transform(x_test.iloc[:100])
    floor = {}
    for label, enc in (("1", enc1), ("100", enc100)):
        ts = []
        for _ in range(2000 if label == "1" else 500):
            t0 = time.perf_counter()
            impl.booster.inplace_predict(enc)
            ts.append((time.perf_counter() - t0) * 1000)
        floor[label] = statistics.median(ts)

    servers = {}
    try:
        for name, uri in (("ours", ours_uri), ("stock", stock_uri)):
            servers[name] = _serve(uri, workdir, f"serve-{name}")
        clients = {name: Client(port) for name, (_, port) in servers.items()}
        singles = [_payload(x_test.iloc[[i]]) for i in range(200)]
        hundreds = [_payload(x_test.iloc[i * 100 : (i + 1) * 100]) for i in range(10)]
        # Served predictions equal in-process ones.
        got = clients["ours"].post(_payload(x_test.iloc[:100]))["predictions"]
        served_same = all(
            abs(g[cols[1]] - e) == 0.0 for g, e in zip(got, expected[:100, 1], strict=True)
        )
        lat: dict[str, dict[str, list[float]]] = {n: {"1": [], "100": []} for n in servers}
        for label, bodies, reps in (("1", singles, args.requests), ("100", hundreds, 200)):
            for name in servers:  # warm-up
                for b in bodies[:20]:
                    clients[name].post(b)
            for i in range(reps):
                order = ("ours", "stock") if i % 2 == 0 else ("stock", "ours")
                for name in order:
                    t0 = time.perf_counter()
                    clients[name].post(bodies[i % len(bodies)])
                    lat[name][label].append((time.perf_counter() - t0) * 1000)
        rps: dict[str, list[float]] = {n: [] for n in servers}
        for _round in range(2):
            for name in ("ours", "stock") if _round == 0 else ("stock", "ours"):
                rps[name].append(throughput(servers[name][1], singles, 4, args.seconds))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=30)

    res = {
        name: {
            "p50_1row_ms": statistics.median(lat[name]["1"]),
            "p99_1row_ms": _pct(lat[name]["1"], 0.99),
            "p50_100rows_ms": statistics.median(lat[name]["100"]),
            "p99_100rows_ms": _pct(lat[name]["100"], 0.99),
            "rps_4_clients": statistics.mean(rps[name]),
            "rps_rounds": rps[name],
        }
        for name in servers
    }
    return {
        "dataset": "lending_club",
        "columns": len(schema.feature_names),
        "trees": 300,
        "predictions_identical_to_pipeline": identical and same_labels,
        "served_equals_in_process": served_same,
        "floor_inplace_predict_ms": {"1row": floor["1"], "100rows": floor["100"]},
        "ours": res["ours"],
        "stock": res["stock"],
        "ratio_p50_1row": res["ours"]["p50_1row_ms"] / res["stock"]["p50_1row_ms"],
        "ratio_p99_1row": res["ours"]["p99_1row_ms"] / res["stock"]["p99_1row_ms"],
        "ratio_p50_100rows": res["ours"]["p50_100rows_ms"] / res["stock"]["p50_100rows_ms"],
        "ratio_rps": res["ours"]["rps_4_clients"] / res["stock"]["rps_4_clients"],
    }


# --------------------------------------------------------------------------------------
# Batch.


def _child_predict(uri: str, data: str) -> None:
    """In a fresh process: one in-process predict call over rows held in memory."""
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    frame = pd.read_parquet(data)
    cols = model.metadata.get_input_schema().input_names()
    frame = frame[cols]
    t0 = time.perf_counter()
    model.predict(frame)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(frame), "seconds": seconds, "peak_mb": peak}))


def _child_score(params_file: str, uri: str, data: str, out: str) -> None:
    """In a fresh process: what `mlplatform score` does, from opening the model to the
    renamed output file (file reading and writing included). Library imports happen first,
    as in the predict child, so both times cover the same kind of work."""
    import mlflow.pyfunc  # noqa: F401
    import skops.io  # noqa: F401
    import xgboost  # noqa: F401

    from mlplatform import score
    from mlplatform.config import load_params

    params = load_params(params_file)
    t0 = time.perf_counter()
    summary = score.run_score(params, Path(data), Path(out), model_uri=uri, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": summary.rows_scored, "seconds": seconds, "peak_mb": peak}))


def _run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def batch(args, workdir: Path) -> dict:
    import mlflow

    from mlplatform import datasets, ingest, prepare
    from mlplatform.config import Paths

    # The model: 300 trees trained on part of the data (prediction cost does not depend
    # on how many rows it was trained on).
    params = bench_params(
        workdir,
        {
            "data.source": "synthetic_fraud",
            "data.rows": 200_000,
            "data.target": "Class",
            "data.positive_class": 1,
            "data.sensitive_features": [],
            "data.slice_columns": [],
        },
    )
    params_file = workdir / "params-batch.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    paths = Paths(workdir / "fraud")
    ingest.run(params, paths)
    prepare.run(params, paths)
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    mlflow.set_experiment("bench-batch")
    schema, fitted, valid = _fit_pipeline(params, paths)
    uri = _log_ours(schema, fitted, valid)

    full = datasets.synthetic_fraud(args.rows, seed=7).drop(columns=["Class"])
    big, small = workdir / "score-full.parquet", workdir / "score-quarter.parquet"
    full.to_parquet(big, index=False)
    full.iloc[: args.rows // 4].to_parquet(small, index=False)
    del full

    runs: dict[str, list[dict]] = {"predict": [], "score": [], "score_quarter": []}
    for rep in range(args.batch_repeats):
        order = ["predict", "score"] if rep % 2 == 0 else ["score", "predict"]
        for name in order:
            if name == "predict":
                runs[name].append(_run_child("predict", uri, str(big)))
            else:
                runs[name].append(
                    _run_child(
                        "score", str(params_file), uri, str(big), str(workdir / "out.parquet")
                    )
                )
    runs["score_quarter"].append(
        _run_child("score", str(params_file), uri, str(small), str(workdir / "out-q.parquet"))
    )
    # The CLI end to end, as a person runs it (interpreter start and imports included).
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "mlplatform"),
            "score",
            str(big),
            str(workdir / "out-cli.parquet"),
            "--model-uri",
            uri,
            "--params",
            str(params_file),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    cli_seconds = time.perf_counter() - t0

    def rate(rs):
        return statistics.median(r["rows"] / r["seconds"] for r in rs)

    return {
        "rows": args.rows,
        "chunk_rows": params.score.chunk_rows,
        "predict_rows_per_s": rate(runs["predict"]),
        "score_rows_per_s": rate(runs["score"]),
        "ratio_score_vs_predict": rate(runs["score"]) / rate(runs["predict"]),
        "cli_end_to_end_s": cli_seconds,
        "cli_rows_per_s": args.rows / cli_seconds,
        "peak_mb": {
            "predict_in_memory": max(r["peak_mb"] for r in runs["predict"]),
            "score_full": max(r["peak_mb"] for r in runs["score"]),
            "score_quarter": runs["score_quarter"][0]["peak_mb"],
        },
        "runs": runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=1000, help="1-row requests per server")
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput round")
    ap.add_argument("--batch-repeats", type=int, default=2)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        (_child_predict if kind == "predict" else _child_score)(*rest)
        return 0
    for key in ("MLFLOW_TRACKING_URI", "MLPLATFORM_PREDICT_THREADS"):
        os.environ.pop(key, None)
    report: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="mlplatform-bench-"))
    os.chdir(workdir)
    try:
        if not args.skip_live:
            report["live"] = live(args, workdir)
            r = report["live"]
            print(
                f"live (LendingClub, 300 trees): p50 1 row ours {r['ours']['p50_1row_ms']:.2f} ms"
                f" vs stock {r['stock']['p50_1row_ms']:.2f} ms -> {r['ratio_p50_1row']:.2f}x; "
                f"p99 {r['ratio_p99_1row']:.2f}x; 100 rows {r['ratio_p50_100rows']:.2f}x; "
                f"4 clients {r['ours']['rps_4_clients']:.0f} vs {r['stock']['rps_4_clients']:.0f}"
                f" req/s -> {r['ratio_rps']:.2f}x; floor "
                f"{r['floor_inplace_predict_ms']['1row']:.3f} ms; identical predictions: "
                f"{r['predictions_identical_to_pipeline']}",
                file=sys.stderr,
            )
        if not args.skip_batch:
            report["batch"] = batch(args, workdir)
            b = report["batch"]
            print(
                f"batch ({b['rows']:,} rows): score {b['score_rows_per_s']:,.0f} rows/s vs one "
                f"predict call {b['predict_rows_per_s']:,.0f} rows/s -> "
                f"{b['ratio_score_vs_predict']:.2f}x; peak MB {b['peak_mb']}",
                file=sys.stderr,
            )
    finally:
        os.chdir(ROOT)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
