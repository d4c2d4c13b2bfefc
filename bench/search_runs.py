"""search_runs over 10,000 runs: a local sqlite store against the PostgreSQL-backed server.

The same 10,000 finished runs (seeded: 5 metrics, 8 params, 6 tags each, as a search's
trials carry) are written into two stores, in bulk through SQLAlchemy with MLflow's own table
models (the API would take minutes per store):

- a sqlite file, as every local command uses it, read in-process and through
  ``mlflow server`` on that file;
- a fresh PostgreSQL database behind ``mlplatform server`` (team mode), read through the
  server and, to tell the database from the HTTP layer, in-process.

Timed side by side, each round in a shuffled order, after warm-up rounds:

- ``MlflowClient.search_runs`` with a metric filter and an order
  (``metrics.valid_average_precision > 0.5``, that metric DESC; 100 and 1,000 results);
- the UI's own call for the runs table (``POST /ajax-api/2.0/mlflow/runs/search`` with the
  body the page sent, captured from headless Chromium);
- the runs page itself in headless Chromium (Chrome DevTools Protocol): navigation start
  to the filtered search's answer, and to the best run's name in the page.

Every path must return the same runs in the same order as an answer computed from the
generated data.

    python bench/search_runs.py [--runs 10000] [--repeats 9] [--page-repeats 5] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
import warnings
from pathlib import Path

from common import ROOT

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

METRIC = "valid_average_precision"
FILTER = f"metrics.{METRIC} > 0.5"
ORDER = [f"metrics.{METRIC} DESC"]
PG = os.environ.get("MLPLATFORM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PARAMS = ("family", "max_depth", "learning_rate", "n_estimators", "subsample",
          "colsample_bytree", "min_child_weight", "reg_lambda")  # fmt: skip


def make_runs(n: int, seed: int) -> list[dict]:
    """n finished trial runs; every value comes from the seed."""
    rng = random.Random(seed)
    start = 1_780_000_000_000
    runs = []
    for i in range(n):
        ap = rng.random()
        runs.append({
            "run_uuid": uuid.UUID(int=rng.getrandbits(128)).hex,
            "name": f"trial-{i:05d}",
            "start_time": start + 1000 * i,
            "metrics": {
                METRIC: ap,
                "valid_roc_auc": 0.5 + ap / 2,
                "valid_log_loss": 1 - ap / 2,
                "train_average_precision": min(1.0, ap + 0.05),
                "fit_seconds": rng.uniform(0.2, 4.0),
            },
            "params": {p: str(rng.randint(1, 500)) for p in PARAMS},
        })  # fmt: skip
    return runs


def expected(runs: list[dict], limit: int) -> list[str]:
    """The answer, computed from the data: filter, then metric DESC."""
    hits = [r for r in runs if r["metrics"][METRIC] > 0.5]
    hits.sort(key=lambda r: -r["metrics"][METRIC])
    return [r["run_uuid"] for r in hits[:limit]]


def bulk_insert(db_uri: str, experiment_id: str, artifact_location: str, runs: list[dict]):
    """Write the runs straight into MLflow's tables (runs, metrics, latest_metrics, ...)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )  # fmt: skip

    engine = sa.create_engine(db_uri, poolclass=sa.pool.NullPool)
    chunk = 500
    with engine.begin() as conn:
        for lo in range(0, len(runs), chunk):
            part = runs[lo : lo + chunk]
            rows, metrics, params, tags = [], [], [], []
            for r in part:
                rid, t = r["run_uuid"], r["start_time"]
                rows.append({
                    "run_uuid": rid, "name": r["name"], "source_type": "LOCAL",
                    "source_name": "bench", "entry_point_name": "", "user_id": "bench",
                    "status": "FINISHED", "start_time": t, "end_time": t + 500,
                    "source_version": "", "lifecycle_stage": "active",
                    "artifact_uri": f"{artifact_location}/{rid}/artifacts",
                    "experiment_id": int(experiment_id),
                })  # fmt: skip
                for k, v in r["metrics"].items():
                    metrics.append({"key": k, "value": v, "timestamp": t + 500, "step": 0,
                                    "is_nan": False, "run_uuid": rid})  # fmt: skip
                params += [{"key": k, "value": v, "run_uuid": rid} for k, v in r["params"].items()]
                tags += [
                    {"key": k, "value": v, "run_uuid": rid}
                    for k, v in {
                        "mlflow.runName": r["name"], "mlflow.user": "bench",
                        "mlflow.source.type": "LOCAL", "mlflow.source.name": "bench",
                        "mlplatform.trial": r["name"][6:], "mlplatform.family": "xgboost",
                    }.items()
                ]  # fmt: skip
            conn.execute(sa.insert(SqlRun.__table__), rows)
            conn.execute(sa.insert(SqlMetric.__table__), metrics)
            conn.execute(sa.insert(SqlLatestMetric.__table__), metrics)
            conn.execute(sa.insert(SqlParam.__table__), params)
            conn.execute(sa.insert(SqlTag.__table__), tags)
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE"))  # fresh statistics, as autovacuum would give
    engine.dispose()


def summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": 1000 * statistics.median(times), "q1_ms": 1000 * q[0],
            "q3_ms": 1000 * q[2], "min_ms": 1000 * min(times), "n": len(times),
            "raw_ms": [round(1000 * t, 1) for t in times]}  # fmt: skip


def measure_search(paths: dict, limits: list[int], repeats: int, warmup: int, truth: dict):
    """Median search_runs time per (path, max_results); every answer checked."""
    times = {(p, n): [] for p in paths for n in limits}
    rng = random.Random(0)
    for round_no in range(warmup + repeats):
        order = [(p, n) for p in paths for n in limits]
        rng.shuffle(order)
        for p, n in order:
            client, exp_id = paths[p]
            t0 = time.perf_counter()
            found = client.search_runs([exp_id], FILTER, order_by=ORDER, max_results=n)
            dt = time.perf_counter() - t0
            ids = [r.info.run_id for r in found]
            if ids != truth[n]:
                raise SystemExit(f"{p}: search_runs(max_results={n}) returned other runs")
            if round_no >= warmup:
                times[(p, n)].append(dt)
    return {f"{p} | {n}": summary(v) for (p, n), v in times.items()}


def measure_ajax(servers: dict, bodies: dict, repeats: int, warmup: int, truth: dict):
    """The runs table's own request, replayed with the body the page sent."""
    import requests

    session = requests.Session()
    times = {(s, b): [] for s in servers for b in bodies}
    rng = random.Random(1)
    for round_no in range(warmup + repeats):
        order = list(times)
        rng.shuffle(order)
        for s, b in order:
            uri, exp_id = servers[s]
            body = {**bodies[b], "experiment_ids": [exp_id]}
            t0 = time.perf_counter()
            resp = session.post(f"{uri}/ajax-api/2.0/mlflow/runs/search", json=body, timeout=60)
            dt = time.perf_counter() - t0
            resp.raise_for_status()
            ids = [r["info"]["run_id"] for r in resp.json().get("runs", [])]
            if b == "filtered" and ids != truth[body["max_results"]]:
                raise SystemExit(f"{s}: the UI's runs/search returned other runs")
            if round_no >= warmup:
                times[(s, b)].append(dt)
    return {f"{s} | {b}": summary(v) for (s, b), v in times.items()}


# --------------------------------------------------------------------------------------
# Headless Chromium through the DevTools protocol (aiohttp's websocket client).

OBSERVER = """
window.__seen = null;
new MutationObserver(() => {
  if (window.__seen === null && document.body && document.body.textContent.includes(%s))
    window.__seen = performance.now();
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


class Browser:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc = None
        self.ws = None
        self.http = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> Browser:
        import aiohttp

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("chromium not found (apt-get install -y chromium)")
        profile = self.folder / "profile"
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1600,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.exists() and len(port_file.read_text().split()) >= 2:
                break
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.proc.kill()
        self.proc.wait()

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                await self.events.put(data)

    async def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def visit(
        self, url: str, marker: str, must_post: str, timeout: float = 120, png: Path | None = None
    ) -> dict:
        """Open url in a new tab; time until the search whose body holds must_post answers,
        and until marker is in the page. Returns ms from navigation start."""
        target = (await self.send("Target.createTarget", url="about:blank"))["targetId"]
        sid = (await self.send("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        await self.send("Network.enable", sid)
        await self.send("Page.enable", sid)
        await self.send(
            "Page.addScriptToEvaluateOnNewDocument", sid, source=OBSERVER % json.dumps(marker)
        )
        while not self.events.empty():
            self.events.get_nowait()
        await self.send("Page.navigate", sid, url=url)
        t_doc = req = sent = done = seen = None
        body, searches = None, 0
        deadline = time.monotonic() + timeout
        while seen is None or done is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}: the runs page did not show {marker} in {timeout} s")
            try:
                ev = await asyncio.wait_for(self.events.get(), 0.1)
            except TimeoutError:
                ev = None
            if ev is not None and ev.get("sessionId") == sid:
                p = ev.get("params", {})
                if ev["method"] == "Network.requestWillBeSent":
                    if p.get("type") == "Document" and t_doc is None:
                        t_doc = p["timestamp"]
                    post = p["request"].get("postData", "")
                    if "/runs/search" in p["request"]["url"] and must_post in post:
                        # The last such search is the one the table shows.
                        req, sent, body = p["requestId"], p["timestamp"], json.loads(post)
                        done = None
                        searches += 1
                elif ev["method"] == "Network.loadingFinished" and p["requestId"] == req:
                    done = p["timestamp"]
            if ev is None or seen is None:
                got = await self.send(
                    "Runtime.evaluate", sid, expression="window.__seen", returnByValue=True
                )
                seen = got.get("result", {}).get("value")
        if png is not None:
            import base64

            await asyncio.sleep(1.0)  # let the table settle before the picture
            shot = await self.send("Page.captureScreenshot", sid, format="png")
            png.write_bytes(base64.b64decode(shot["data"]))
        await self.send("Target.closeTarget", targetId=target)
        return {"search_done_ms": 1000 * (done - t_doc), "search_ms": 1000 * (done - sent),
                "rendered_ms": seen, "body": body, "searches": searches}  # fmt: skip


async def measure_pages(
    servers: dict, marker: str, repeats: int, folder: Path, shots: Path | None = None
) -> dict:
    query = urllib.parse.urlencode(
        {"searchFilter": FILTER, "orderByKey": f"metrics.`{METRIC}`", "orderByAsc": "false"}
    )
    times = {s: [] for s in servers}
    bodies = {}
    async with Browser(folder) as browser:
        for s, (uri, exp_id) in servers.items():  # warm-up: the browser caches the assets
            # First the table's default query: a first visit, before the page remembers
            # a filter for this experiment (it keeps the last one in local storage).
            plain = await browser.visit(
                f"{uri}/#/experiments/{exp_id}/runs", "trial-", '"max_results":100'
            )
            bodies.setdefault("default", plain["body"])
            url = f"{uri}/#/experiments/{exp_id}/runs?{query}"
            png = shots / f"runs-page-{s.split()[0]}.png" if shots else None
            bodies[s] = (await browser.visit(url, marker, METRIC, png=png))["body"]
        rng = random.Random(2)
        for _ in range(repeats):
            order = list(servers)
            rng.shuffle(order)
            for s in order:
                uri, exp_id = servers[s]
                url = f"{uri}/#/experiments/{exp_id}/runs?{query}"
                times[s].append(await browser.visit(url, marker, METRIC))
    out = {}
    for s, visits in times.items():
        for key in ("search_done_ms", "search_ms", "rendered_ms"):
            out[f"{s} | {key}"] = summary([v[key] / 1000 for v in visits])
    visits = {
        s: [{k: v for k, v in x.items() if k != "body"} for x in xs] for s, xs in times.items()
    }
    return {"page": out, "bodies": bodies, "visits": visits}


# --------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(backend_uri: str, work: Path, tag: str):
    from mlplatform.team.server import start
    from mlplatform.team.settings import ServerSettings

    settings = ServerSettings(
        backend_uri=backend_uri,
        port=free_port(),
        workers=2,
        artifacts_destination=str(work / f"{tag}-artifacts"),
        state_dir=str(work / f"{tag}-state"),
    )
    return start(settings, log_path=work / f"{tag}.log")


def ratio(table: dict, a: str, b: str) -> float:
    return table[a]["median_ms"] / table[b]["median_ms"]


def report(res: dict) -> list[str]:
    s, a, p = res["search"], res["ajax"], res["page"]
    lines = [f"{res['runs']} runs; medians of {res['repeats']} rounds (q1-q3), ms"]
    lines.append("search_runs(filter, order_by):")
    for key, v in s.items():
        lines.append(f"  {key:45s} {v['median_ms']:8.1f}  ({v['q1_ms']:.1f}-{v['q3_ms']:.1f})")
    for n in res["limits"]:
        lines.append(
            f"  max_results={n}: PG server / sqlite file "
            f"{ratio(s, f'PostgreSQL, team server | {n}', f'sqlite file, in-process | {n}'):.2f}x;"
            f" PG server / sqlite server "
            f"{ratio(s, f'PostgreSQL, team server | {n}', f'sqlite, mlflow server | {n}'):.2f}x;"
            f" PG in-process / sqlite file "
            f"{ratio(s, f'PostgreSQL, in-process | {n}', f'sqlite file, in-process | {n}'):.2f}x"
        )
    lines.append("UI runs/search call (body captured from the page), replayed:")
    for key, v in a.items():
        lines.append(f"  {key:45s} {v['median_ms']:8.1f}  ({v['q1_ms']:.1f}-{v['q3_ms']:.1f})")
    for b in ("filtered", "default"):
        r = ratio(a, f"PostgreSQL server | {b}", f"sqlite server | {b}")
        lines.append(f"  {b}: PG / sqlite {r:.2f}x")
    lines.append(f"runs page in headless Chromium ({res['page_repeats']} visits each):")
    for key, v in p.items():
        lines.append(f"  {key:45s} {v['median_ms']:8.1f}  ({v['q1_ms']:.1f}-{v['q3_ms']:.1f})")
    for key in ("search_done_ms", "rendered_ms"):
        r = ratio(p, f"PostgreSQL server | {key}", f"sqlite server | {key}")
        lines.append(f"  {key}: PG / sqlite {r:.2f}x")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--page-repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--screenshots", type=Path, help="save the runs pages here (to look at)")
    args = ap.parse_args()

    from mlflow import MlflowClient

    from mlplatform.team.database import drop_database, with_driver

    work = Path(tempfile.mkdtemp(prefix="bench-search-runs-"))
    sqlite_uri = f"sqlite:///{work / 'mlflow.db'}"
    pg_uri = f"{PG}/mlplatform_bench_{secrets.token_hex(4)}"
    limits = [100, 1000]
    started = []
    try:
        pg_srv = start_server(pg_uri, work, "pg")
        started.append(pg_srv)
        sq_srv = start_server(sqlite_uri, work, "sqlite")
        started.append(sq_srv)
        print(
            f"servers started: PostgreSQL {pg_srv.started_s:.1f} s, sqlite {sq_srv.started_s:.1f} s"
        )
        exp = {}
        for tag, srv, db in (("pg", pg_srv, with_driver(pg_uri)), ("sq", sq_srv, sqlite_uri)):
            client = MlflowClient(srv.uri)
            exp_id = client.create_experiment("bench-search-runs")
            exp[tag] = exp_id
            runs = make_runs(args.runs, args.seed)
            t0 = time.perf_counter()
            bulk_insert(db, exp_id, client.get_experiment(exp_id).artifact_location, runs)
            print(f"{tag}: {args.runs} runs written in {time.perf_counter() - t0:.1f} s")
        truth = {n: expected(runs, n) for n in (*limits, 50)}
        paths = {
            "sqlite file, in-process": (MlflowClient(sqlite_uri), exp["sq"]),
            "sqlite, mlflow server": (MlflowClient(sq_srv.uri), exp["sq"]),
            "PostgreSQL, in-process": (MlflowClient(with_driver(pg_uri)), exp["pg"]),
            "PostgreSQL, team server": (MlflowClient(pg_srv.uri), exp["pg"]),
        }
        search = measure_search(paths, limits, args.repeats, args.warmup, truth)
        servers = {
            "sqlite server": (sq_srv.uri, exp["sq"]),
            "PostgreSQL server": (pg_srv.uri, exp["pg"]),
        }
        best = next(r["name"] for r in runs if r["run_uuid"] == truth[100][0])
        pages = asyncio.run(measure_pages(servers, best, args.page_repeats, work, args.screenshots))
        ui_bodies = {
            "filtered": pages["bodies"]["PostgreSQL server"],
            "default": pages["bodies"]["default"],
        }
        for body in ui_bodies.values():
            body.pop("experiment_ids", None)
        truth.setdefault(
            ui_bodies["filtered"]["max_results"],
            expected(runs, ui_bodies["filtered"]["max_results"]),
        )
        ajax = measure_ajax(servers, ui_bodies, args.repeats, args.warmup, truth)
    finally:
        for srv in started:
            srv.stop()
        drop_database(pg_uri)
        shutil.rmtree(work, ignore_errors=True)
    res = {
        "runs": args.runs, "repeats": args.repeats, "page_repeats": args.page_repeats,
        "limits": limits, "filter": FILTER, "order_by": ORDER, "ui_bodies": ui_bodies,
        "search": search, "ajax": ajax, "page": pages["page"], "visits": pages["visits"],
        "server_start_s": {"postgresql": pg_srv.started_s, "sqlite": sq_srv.started_s},
    }  # fmt: skip
    out = ROOT / "bench" / "results" / "search_runs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("\n".join(report(res)))
    print(f"raw results: {out}")


if __name__ == "__main__":
    sys.exit(main())
