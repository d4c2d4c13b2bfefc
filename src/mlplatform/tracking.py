"""MLflow plumbing: store setup, lineage tags, and a background writer for trial runs.

Tracking must stay cheap next to the search: a sqlite ``log_batch`` costs about 15 ms, so
trial runs are written by one background thread, each as a single create / batch / terminate
sequence, while the next trial trains. Optuna's storage stays the source of truth; on resume
the runs are reconciled from it (see ``tune.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import queue
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlplatform.config import Params, Paths

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000
LIBRARIES = (
    "mlplatform",
    "mlflow",
    "optuna",
    "xgboost-cpu",
    "scikit-learn",
    "shap",
    "dvc",
    "pandas",
    "numpy",
    "skops",
)


def tracking_uri(params: Params) -> str:
    """The user's MLFLOW_TRACKING_URI wins (team mode); otherwise the store from params."""
    import mlplatform

    return mlplatform.USER_TRACKING_URI or params.mlflow.tracking_uri


def registry_uri(params: Params) -> str:
    """MLFLOW_REGISTRY_URI if set, else the tracking store (MLflow's own rule)."""
    import mlplatform

    return mlplatform.USER_REGISTRY_URI or tracking_uri(params)


def setup(params: Params) -> tuple[Any, str]:
    """Point MLflow at the store and make sure the experiment exists.

    Returns:
        (MlflowClient, experiment id).
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(params))
    client = MlflowClient()
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    if exp is None:
        exp_id = client.create_experiment(params.mlflow.experiment)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    return client, exp_id


def user(params: Params) -> str:
    """Who is acting: params, then MLPLATFORM_USER, then the login name."""
    return params.mlflow.user or os.environ.get("MLPLATFORM_USER") or _login_name()


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --------------------------------------------------------------------------------------
# Lineage.


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def dvc_lock_hashes(root: Path, wanted: Iterable[Path]) -> dict[str, str]:
    """md5 hashes dvc.lock records for the given paths (dirs: their .dir hash)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        content = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return {}
    wanted_rel = {
        str(Path(p).relative_to(root)) if Path(p).is_absolute() else str(p) for p in wanted
    }
    found: dict[str, str] = {}
    for stage in (content.get("stages") or {}).values():
        for entry in (stage.get("outs") or []) + (stage.get("deps") or []):
            path = entry.get("path")
            if path in wanted_rel and "md5" in entry:
                found[path] = entry["md5"]
    return found


def lineage(params: Params, paths: Paths, data_files: dict[str, Path]) -> dict[str, str]:
    """Tags that trace a run back to the exact code, data, params and libraries.

    Args:
        data_files: name -> file the run read (their md5 is recorded directly, and the
            dvc.lock hashes of their folders when the pipeline ran under DVC).
    """
    from mlplatform.io import file_md5

    tags: dict[str, str] = {
        "mlplatform.seed": str(params.seed),
        "mlplatform.params_hash": params.section_hash(),
        "mlplatform.data_source": params.data.source,
        "mlplatform.python": platform.python_version(),
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["mlplatform.git_dirty"] = str(
            bool(_git("status", "--porcelain", "--untracked-files=no"))
        )
    for name, file in data_files.items():
        if Path(file).is_file():
            tags[f"mlplatform.data.{name}.md5"] = file_md5(file)
    folders = {Path(f).parent for f in data_files.values()}
    for path, md5 in dvc_lock_hashes(paths.root, folders).items():
        tags[f"dvc.lock.{path}"] = md5
    for lib in LIBRARIES:
        try:
            tags[f"lib.{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return tags


def params_digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Background writer for finished runs.


@dataclass
class RunRecord:
    """Everything about one finished run, written in one go."""

    experiment_id: str
    run_name: str
    start_ms: int
    end_ms: int
    status: str  # FINISHED | FAILED | KILLED
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def write_run(client: Any, rec: RunRecord) -> str:
    """Create a run and fill it with at most a few batched calls; return its id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH

    run = client.create_run(
        rec.experiment_id, start_time=rec.start_ms, tags=rec.tags, run_name=rec.run_name
    )
    ts = rec.end_ms
    metrics = [Metric(k, float(v), ts, 0) for k, v in rec.metrics.items() if _finite(v)]
    metrics += [Metric(k, float(v), ts, s) for k, v, s in rec.step_metrics if _finite(v)]
    params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in rec.params.items()]
    entities: list[Any] = [*params, *metrics]
    for i in range(0, len(entities), MAX_ENTITIES_PER_BATCH):
        chunk = entities[i : i + MAX_ENTITIES_PER_BATCH]
        client.log_batch(
            run.info.run_id,
            metrics=[e for e in chunk if isinstance(e, Metric)],
            params=[e for e in chunk if isinstance(e, Param)],
            tags=[] if i else [RunTag("mlplatform.written", "batched")],
        )
    client.set_terminated(run.info.run_id, rec.status, end_time=rec.end_ms)
    return run.info.run_id


def _finite(v: Any) -> bool:
    try:
        return v == v and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


class _Child:
    """A forked helper process fed through a queue (see TrackingWorker)."""

    def __init__(self, role: str, uri: str) -> None:
        import multiprocessing as mp

        # fork: the child inherits the imported MLflow and starts in milliseconds; it drops
        # the inherited database connections before using the store (see _child_main).
        ctx = mp.get_context("fork")
        self.jobs = ctx.Queue()
        self.results = ctx.Queue()
        self.proc = ctx.Process(
            target=_child_main,
            args=(role, uri, self.jobs, self.results, os.getpid()),
            name=f"mlflow-{role}",
            daemon=True,
        )
        self.proc.start()

    def finish(self, timeout: float) -> tuple[int, float]:
        """Wait for the helper's result, watching that it is still alive.

        Raises:
            RuntimeError: the helper failed, died, or did not finish within timeout.
        """
        self.jobs.put(None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, payload = self.results.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.proc.is_alive():
                    try:  # it may have posted its result just before exiting
                        status, payload = self.results.get(timeout=1)
                        break
                    except queue.Empty:
                        self.kill()
                        raise RuntimeError(f"{self.proc.name} died") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.proc.name} did not finish") from None
        self.proc.join(timeout=30)
        if status == "error":
            raise RuntimeError(f"{self.proc.name} failed: {payload}")
        return payload

    def kill(self) -> None:
        """Stop now; never block on what is still queued for it."""
        # A full pipe to a dead reader would otherwise hang this process at exit.
        self.jobs.cancel_join_thread()
        self.results.cancel_join_thread()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=30)


class TrackingWorker:
    """Writes trial runs, and renders the end-of-study plots, in two helper processes.

    SQLAlchemy's work per run is CPU-bound Python (about 17 ms of CPU for a sqlite
    create/batch/terminate): in a thread it competes for the GIL with the search. The
    helpers are forked processes scheduled at idle priority, so they only use CPU the
    search leaves free; the plotter imports matplotlib during the search, and at the end
    it renders while the writer finishes its backlog. If the parent dies, the helpers exit;
    what was not written is rebuilt from the Optuna storage on the next run
    (``tune.reconcile``).
    """

    def __init__(self, uri: str) -> None:
        self._writer = _Child("writer", uri)
        self._plotter = _Child("plotter", uri)
        self._closed = False
        self.submitted = 0
        self.written = 0
        self.seconds = 0.0

    def submit(self, rec: RunRecord) -> None:
        self.submitted += 1
        self._writer.jobs.put(("run", rec))

    def plots(self, run_id: str, trials: list, direction: str, best_family: str) -> None:
        """Render the search plots from these trials and log them onto run_id."""
        self._plotter.jobs.put(("plots", (run_id, trials, direction, best_family)))

    def close(self, timeout: float = 600.0) -> list[str]:
        """Wait for every job.

        Returns:
            The helpers' failures (empty when all went well). A failed write is not lost:
            the caller rebuilds missing runs from the Optuna storage (``tune.reconcile``).
        """
        if self._closed:
            return []
        self._closed = True
        problems = []
        try:
            self.written, self.seconds = self._writer.finish(timeout)
        except RuntimeError as exc:
            problems.append(str(exc))
        try:
            self._plotter.finish(timeout)
        except RuntimeError as exc:
            problems.append(str(exc))
        self.abandon()
        return problems

    def abandon(self) -> None:
        """Stop the helpers without waiting (the parent is being interrupted)."""
        self._writer.kill()
        self._plotter.kill()
        self._closed = True


def _child_main(role: str, uri: str, jobs: Any, results: Any, parent_pid: int) -> None:
    import signal

    # Ctrl-C reaches the whole process group: let the parent decide when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Die with the parent (Linux): a killed search must not leave a writer behind that
    # races the next run's reconcile. Elsewhere the orphan check below does it, within 1 s.
    _die_with_parent(parent_pid)
    # The search comes first: helpers only get CPU the search leaves idle.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    engine = getattr(client._tracking_client.store, "engine", None)
    if engine is not None:
        # Connections opened by the parent must not be shared (SQLAlchemy's fork recipe).
        engine.dispose(close=False)
    if role == "plotter":
        _warm_up()
    error: str | None = None
    written, busy = 0, 0.0
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return  # orphaned: the parent was killed
            continue
        if job is None:
            break
        if error is not None or os.getppid() != parent_pid:
            continue
        kind, payload = job
        t0 = time.perf_counter()
        try:
            if kind == "run":
                write_run(client, payload)
                written += 1
            else:
                _log_plots(client, *payload)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        busy += time.perf_counter() - t0
    results.put(("error", error) if error else ("ok", (written, busy)))


def _die_with_parent(parent_pid: int) -> None:
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _warm_up() -> None:
    """Import the plotting stack while the search is still running."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import optuna.visualization.matplotlib  # noqa: F401
    from optuna.importance import PedAnovaImportanceEvaluator  # noqa: F401


def _log_plots(client: Any, run_id: str, trials: list, direction: str, family: str) -> None:
    import tempfile

    import optuna

    from mlplatform.tune import search_plots

    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    with tempfile.TemporaryDirectory() as tmp:
        for path in search_plots(study, family, Path(tmp)):
            client.log_artifact(run_id, str(path), artifact_path="search")
