"""Scoring speed, measured side by side in one run, printed as ratios.

Live: one trained pipeline (one-hot encoding + 300-tree XGBoost on LendingClub's raw
columns) is logged twice, our way (``mlplatform.model_format``) and the stock way
(``mlflow.sklearn`` with ``pyfunc_predict_fn="predict_proba"``); a third copy of ours has its
loader swapped for ``empty_model`` (no work at all: what MLflow's server alone costs with this
signature). All three are served by ``mlflow models serve`` (1 worker each,
``--env-manager local``) and get the same requests in shuffled order: median and p99 latency
for 1-row requests in each request format (``dataframe_split``, ``dataframe_records``,
``inputs``) and for 100-row requests, then requests per second with 4 concurrent clients in
shuffled rounds, with the server's CPU time per request. The floor is the model's raw
in-process predict (``Booster.inplace_predict`` on the encoded rows). Predictions are checked
identical to the training pipeline's on every test row.

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
import random
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
    from mlplatform.data.dataset import load_schema, load_split
    from mlplatform.modeling import train

    schema = load_schema(paths)
    tr, va = load_split(paths, "train"), load_split(paths, "validation")
    if sample:
        tr = tr.sample(n=min(sample, len(tr)), random_state=0)
    hp = {"n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": 0.1}
    return schema, train.fit(params, schema, tr, va, "xgboost", hp), va


def _log_ours(schema, fitted, valid):
    import mlflow

    from mlplatform.modeling import train

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


def _serve(
    uri: str, workdir: Path, log_name: str, extra_env: dict | None = None
) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra_env or {}),
    }
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


def _empty_model(ours_uri: str, workdir: Path) -> str:
    """Our logged model with its loader swapped for ``empty_model`` (a model that does no
    work): same signature, same answer shape, so serving it measures MLflow's own cost."""
    import mlflow
    from mlflow.models import Model

    folder = Path(mlflow.artifacts.download_artifacts(ours_uri, dst_path=str(workdir / "empty")))
    meta = Model.load(str(folder / "MLmodel"))
    meta.flavors["python_function"]["loader_module"] = "empty_model"
    meta.save(str(folder / "MLmodel"))
    return str(folder)


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


# The request formats of MLflow's scoring protocol, each carrying the same rows; the
# 100-row and throughput measurements use the two that differ most.
FORMATS = ("dataframe_split", "dataframe_records", "inputs")
MAIN_FORMATS = ("dataframe_split", "inputs")


def _payload(rows: pd.DataFrame, fmt: str = "dataframe_split") -> bytes:
    if fmt == "dataframe_split":
        body = json.loads(rows.to_json(orient="split", index=False))
    else:
        body = json.loads(rows.to_json(orient="records"))
    return json.dumps({fmt: body}).encode()


def _throughput_worker(port: int, bodies: list[bytes], seconds: float, out) -> None:
    """Posts for ``seconds``; puts the request count, or the error (so nobody waits forever)."""
    try:
        client = Client(port)
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            client.post(bodies[n % len(bodies)])
            n += 1
        out.put(n)
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its descendants (``mlflow models serve`` runs
    uvicorn as a child), from Linux /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except OSError:
        return None
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total + sum(_cpu_seconds(c) or 0.0 for c in children)


def throughput(
    server: tuple[subprocess.Popen, int], bodies: list[bytes], clients: int, seconds: float
) -> tuple[float, float | None]:
    """Requests per second with ``clients`` concurrent client processes, and the server's
    CPU time per request (ms): steadier than the rate on a noisy machine."""
    proc, port = server
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_throughput_worker, args=(port, bodies, seconds, q))
        for _ in range(clients)
    ]
    cpu0 = _cpu_seconds(proc.pid)
    for p in procs:
        p.start()
    counts = [q.get() for _ in procs]
    for p in procs:
        p.join()
    cpu1 = _cpu_seconds(proc.pid)
    errors = [c for c in counts if isinstance(c, str)]
    if errors:
        raise RuntimeError(f"throughput client failed on port {port}: {errors[0]}")
    total = sum(counts)
    cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / total * 1000
    return total / seconds, cpu_ms


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


SERVERS = ("ours", "stock", "empty")


def _latencies(clients: dict, bodies: list[bytes], reps: int, seed: int) -> dict[str, list]:
    """Per server, the time of each request; every round posts the same body to each
    server, in a shuffled order."""
    for name in clients:  # warm-up
        for b in bodies[:20]:
            clients[name].post(b)
    rng = random.Random(seed)
    lat: dict[str, list[float]] = {name: [] for name in clients}
    for i in range(reps):
        order = list(clients)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            clients[name].post(bodies[i % len(bodies)])
            lat[name].append((time.perf_counter() - t0) * 1000)
    return lat


def live(args, workdir: Path) -> dict:
    import mlflow

    from mlplatform import model_format
    from mlplatform.config import Paths
    from mlplatform.data import ingest, prepare

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
    from mlplatform.data.dataset import load_split

    train_raw, test = load_split(paths, "train"), load_split(paths, "test")
    ours_uri = _log_ours(schema, fitted, valid)
    stock_uri, pipe = _log_stock(schema, fitted, train_raw)
    empty_uri = _empty_model(ours_uri, workdir)

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

    # The floor: the booster's own arithmetic on already-encoded rows, in process.
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
        path = os.pathsep.join(
            p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
        )
        servers["empty"] = _serve(empty_uri, workdir, "serve-empty", {"PYTHONPATH": path})
        clients = {name: Client(port) for name, (_, port) in servers.items()}
        singles = {f: [_payload(x_test.iloc[[i]], f) for i in range(200)] for f in FORMATS}
        hundreds = {
            f: [_payload(x_test.iloc[i * 100 : (i + 1) * 100], f) for i in range(10)]
            for f in MAIN_FORMATS
        }
        # Served predictions equal in-process ones, in every request format.
        served_same = True
        for f in FORMATS:
            got = clients["ours"].post(_payload(x_test.iloc[:100], f))["predictions"]
            for row in got:  # the request id the served answer carries (monitoring.served)
                row.pop("request_id", None)
            served_same &= got == out.iloc[:100].to_dict(orient="records")
        lat: dict[str, dict] = {}
        for k, f in enumerate(FORMATS):
            lat[f"1/{f}"] = _latencies(clients, singles[f], args.requests, seed=k)
        for k, f in enumerate(hundreds):
            lat[f"100/{f}"] = _latencies(clients, hundreds[f], 200, seed=10 + k)
        rps: dict[str, dict[str, list[float]]] = {}
        cpu: dict[str, dict[str, list[float]]] = {}
        rng = random.Random(99)
        for f in MAIN_FORMATS:
            rps[f] = {name: [] for name in servers}
            cpu[f] = {name: [] for name in servers}
            for _round in range(args.rounds):
                order = list(SERVERS)
                rng.shuffle(order)
                for name in order:
                    rate, cpu_ms = throughput(servers[name], singles[f], 4, args.seconds)
                    rps[f][name].append(rate)
                    if cpu_ms is not None:
                        cpu[f][name].append(cpu_ms)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=30)

    latency = {
        key: {
            name: {"p50_ms": statistics.median(xs), "p99_ms": _pct(xs, 0.99)}
            for name, xs in per_server.items()
        }
        for key, per_server in lat.items()
    }
    for per_server in latency.values():
        stock = per_server["stock"]
        for name in ("ours", "empty"):
            per_server[name]["ratio_p50"] = per_server[name]["p50_ms"] / stock["p50_ms"]
            per_server[name]["ratio_p99"] = per_server[name]["p99_ms"] / stock["p99_ms"]
    requests_per_s = {
        f: {name: statistics.median(v) for name, v in per_server.items()}
        for f, per_server in rps.items()
    }
    for per_server in requests_per_s.values():
        per_server["ratio_ours"] = per_server["ours"] / per_server["stock"]
        per_server["ratio_empty"] = per_server["empty"] / per_server["stock"]
    server_cpu = {
        f: {name: statistics.median(v) for name, v in per_server.items() if v}
        for f, per_server in cpu.items()
    }
    for per_server in server_cpu.values():
        if {"ours", "stock", "empty"} <= per_server.keys():
            per_server["stock_over_ours"] = per_server["stock"] / per_server["ours"]
            per_server["stock_over_empty"] = per_server["stock"] / per_server["empty"]
    return {
        "dataset": "lending_club",
        "columns": len(schema.feature_names),
        "trees": 300,
        "predictions_identical_to_pipeline": identical and same_labels,
        "served_equals_in_process": bool(served_same),
        "floor_inplace_predict_ms": {"1row": floor["1"], "100rows": floor["100"]},
        "latency": latency,
        "requests_per_s_4_clients": requests_per_s,
        "server_cpu_ms_per_request_4_clients": server_cpu,
        "rps_rounds": rps,
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

    from mlplatform.config import load_params
    from mlplatform.serving import score

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

    from mlplatform.config import Paths
    from mlplatform.data import datasets, ingest, prepare

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


def _print_live(r: dict) -> None:
    err = sys.stderr
    print(
        f"live (LendingClub, {r['trees']} trees; 'empty' is a model that does no work, "
        "served the same way):",
        file=err,
    )
    for key, per in r["latency"].items():
        print(
            f"  p50 {key:<22} ours {per['ours']['p50_ms']:6.2f} ms  stock "
            f"{per['stock']['p50_ms']:6.2f} ms  -> {per['ours']['ratio_p50']:.2f}x "
            f"(p99 {per['ours']['ratio_p99']:.2f}x; empty {per['empty']['ratio_p50']:.2f}x)",
            file=err,
        )
    for fmt, per in r["requests_per_s_4_clients"].items():
        cpu = r["server_cpu_ms_per_request_4_clients"].get(fmt, {})
        cpu_text = (
            f"; server CPU/request ours {cpu['ours']:.1f} ms, stock {cpu['stock']:.1f} ms"
            if {"ours", "stock"} <= cpu.keys()
            else ""
        )
        print(
            f"  req/s 4 clients {fmt:<16} ours {per['ours']:5.0f}  stock {per['stock']:5.0f}"
            f"  -> {per['ratio_ours']:.2f}x (empty {per['ratio_empty']:.2f}x){cpu_text}",
            file=err,
        )
    print(
        f"  floor (booster on encoded rows) {r['floor_inplace_predict_ms']['1row']:.3f} ms; "
        f"identical to the pipeline: {r['predictions_identical_to_pipeline']}; served = "
        f"in-process: {r['served_equals_in_process']}",
        file=err,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--requests", type=int, default=800, help="1-row requests per server and format"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput round")
    ap.add_argument("--rounds", type=int, default=4, help="throughput rounds per server")
    ap.add_argument("--batch-repeats", type=int, default=2)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        (_child_predict if kind == "predict" else _child_score)(*rest)
        return 0
    for key in ("MLFLOW_TRACKING_URI", "MLPLATFORM_PREDICT_THREADS"):
        os.environ.pop(key, None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    report: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="mlplatform-bench-"))
    os.chdir(workdir)
    try:
        if not args.skip_live:
            report["live"] = live(args, workdir)
            _print_live(report["live"])
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
