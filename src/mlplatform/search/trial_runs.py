"""Trials as MLflow runs: one child run per Optuna trial, written off the search's path.

Tracking must stay cheap next to the search: a sqlite ``log_batch`` costs about 15 ms, so
trial runs are written by a background helper process, each as a single create / batch /
terminate sequence, while the next trial trains. Optuna's storage stays the source of
truth; after a crash the runs are made whole again from it (``reconcile``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mlplatform.evaluation.metrics import Objective
from mlplatform.search import space as search_space

log = logging.getLogger(__name__)

# Optuna user attributes of a trial and study.
PARENT_ATTR = "mlflow_parent_run_id"
INTERRUPTED_ATTR = "interrupted"
METRICS_ATTR = "valid_metrics"
ERROR_ATTR = "error"


MAX_PARAM_LEN = 6000


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
    datasets: list[Any] = field(default_factory=list)  # DatasetInputs: the data it read


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
    if rec.datasets:
        client.log_inputs(run.info.run_id, datasets=rec.datasets)
    client.set_terminated(run.info.run_id, rec.status, end_time=rec.end_ms)
    return run.info.run_id


def _finite(v: Any) -> bool:
    try:
        return v == v and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


class _Child:
    """A forked helper process fed through a queue (see TrackingWorker)."""

    def __init__(self, role: str, uri: str, write: Callable[[Any, RunRecord], Any]) -> None:
        import multiprocessing as mp

        # fork: the child inherits the imported MLflow and starts in milliseconds; it drops
        # the inherited database connections before using the store (see _child_main).
        ctx = mp.get_context("fork")
        self.jobs = ctx.Queue()
        self.results = ctx.Queue()
        self.proc = ctx.Process(
            target=_child_main,
            args=(role, uri, self.jobs, self.results, os.getpid(), write),
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

    def hurry(self) -> None:
        """Back to normal scheduling (from SCHED_IDLE / nice 19), where the OS allows it."""
        with contextlib.suppress(AttributeError, OSError, ProcessLookupError):
            os.sched_setscheduler(self.proc.pid, os.SCHED_OTHER, os.sched_param(0))
        with contextlib.suppress(AttributeError, OSError, ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0))

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

    def __init__(
        self,
        uri: str,
        write: Callable[[Any, RunRecord], Any] | None = None,
        plots: bool = True,
    ) -> None:
        """Args:
        write: how a run is written (``write_run``; parallel workers check first, under a
            lock, that no other process wrote it).
        plots: start the plotter (a search worker that only writes trial runs does not).
        """
        write = write or write_run
        self._writer = _Child("writer", uri, write)
        self._plotter = _Child("plotter", uri, write) if plots else None
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
        # The search is over: what is left of the helpers' work is now the critical path.
        # At idle priority they would wait for every other process on a busy machine.
        self._writer.hurry()
        if self._plotter is not None:  # a parallel worker has none (its coordinator plots)
            self._plotter.hurry()
        problems = []
        try:
            self.written, self.seconds = self._writer.finish(timeout)
        except RuntimeError as exc:
            problems.append(str(exc))
        try:
            if self._plotter is not None:
                self._plotter.finish(timeout)
        except RuntimeError as exc:
            problems.append(str(exc))
        self.abandon()
        return problems

    def abandon(self) -> None:
        """Stop the helpers without waiting (the parent is being interrupted)."""
        self._writer.kill()
        if self._plotter is not None:
            self._plotter.kill()
        self._closed = True


def _child_main(
    role: str,
    uri: str,
    jobs: Any,
    results: Any,
    parent_pid: int,
    write: Callable[[Any, RunRecord], Any] = write_run,
) -> None:
    import signal

    # Ctrl-C reaches the whole process group: let the parent decide when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Die with the parent (Linux): a killed search must not leave a writer behind that
    # races the next run's reconcile. Elsewhere the orphan check below does it, within 1 s.
    _die_with_parent(parent_pid)
    # The search comes first: helpers only get CPU the search leaves idle.
    # (SCHED_IDLE is a very low weight, not strict: a parallel worker's writer holding the
    # runs lock still gets on; at normal priority it made the worker's trials ~1.5x slower.)
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
                write(client, payload)
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

    from mlplatform.search.plots import search_plots

    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    with tempfile.TemporaryDirectory() as tmp:
        for path in search_plots(study, family, Path(tmp)):
            client.log_artifact(run_id, str(path), artifact_path="search")


def _ms(dt: Any) -> int:
    return int(dt.timestamp() * 1000) if dt is not None else int(time.time() * 1000)


def trial_record(
    trial: FrozenTrial,
    *,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    metric: Objective,
    spaces: dict[str, dict[str, Any]],
    datasets: list[Any] | None = None,
) -> RunRecord:
    """One finished trial as an MLflow run record (same names for every family).

    Args:
        datasets: the DatasetInputs of the splits every trial reads (train, validation).
    """
    family, hp = search_space.plain_params(trial.params, spaces)
    interrupted = bool(trial.user_attrs.get(INTERRUPTED_ATTR))
    state = "KILLED" if interrupted else trial.state.name
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "KILLED": "KILLED"}.get(state, "FAILED")
    start, end = _ms(trial.datetime_start), _ms(trial.datetime_complete)
    steps = sorted(trial.intermediate_values.items())
    metrics: dict[str, float] = {"duration_s": max(end - start, 0) / 1000.0}
    figures = trial.user_attrs.get(METRICS_ATTR)
    if figures:
        metrics.update({f"valid_{k}": v for k, v in figures.items()})
    elif steps:
        metrics[f"valid_{metric.name}"] = steps[-1][1]
    if steps:
        metrics["last_step"] = float(steps[-1][0])
    tags = {
        "mlflow.parentRunId": parent_run_id,
        "optuna.study_name": name,
        "optuna.trial_number": str(trial.number),
        "trial_state": state,
        "family": family,
    }
    if err := trial.user_attrs.get(ERROR_ATTR):
        tags["error"] = str(err)
    if (retry := trial.user_attrs.get("retry_of")) is not None:
        tags["optuna.retry_of"] = str(retry)
    if trial.user_attrs.get(search_space.START_POINT_ATTR):
        tags["start_point"] = "true"  # queued from tune.start_points, not sampled
    extra_params, step_metrics = _rung_view(trial, metrics, tags)
    return RunRecord(
        experiment_id=experiment_id,
        run_name=f"trial-{trial.number:03d}-{family}",
        start_ms=start,
        end_ms=end,
        status=status,
        params={"family": family, **hp, **extra_params},
        metrics=metrics,
        step_metrics=[(f"intermediate_{metric.name}", v, int(s)) for s, v in steps] + step_metrics,
        tags=tags,
        datasets=list(datasets or []),
    )


def _rung_view(
    trial: FrozenTrial, metrics: dict[str, float], tags: dict[str, str]
) -> tuple[dict[str, Any], list[tuple[str, float, int]]]:
    """What search.rungs recorded on the trial, as run params, metrics, tags and steps.

    Steps of ``intermediate_<metric>`` are rows; ``rung_seconds`` charts each rung's cost.
    """
    records = trial.user_attrs.get("rungs") or []
    if not records:
        return {}, []
    last = records[-1]
    params = {"rows": int(last["rows"]), "rungs_reached": len(records)}
    # Outcomes of the fit (XGBoost's rounds used, rows per forest tree): what train refits with.
    params.update({f"fit.{k}": v for k, v in (trial.user_attrs.get("fit_params") or {}).items()})
    if "best_iteration" in last:
        metrics["best_iteration"] = float(last["best_iteration"])
    if (at := trial.user_attrs.get("pruned_at_rung")) is not None:
        tags["pruned_at_rung"] = str(at)
    if budget := trial.user_attrs.get("budget"):
        tags["budget"] = str(budget)[:500]
    if reused := trial.user_attrs.get("reused_rungs"):
        tags["reused_rungs"] = ",".join(str(r) for r in reused)
    steps = [("rung_seconds", float(r["seconds"]), int(r["rows"])) for r in records]
    return params, steps


def reconcile(
    study: optuna.Study,
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    record: Callable[[FrozenTrial], RunRecord],
) -> dict[str, int]:
    """Make MLflow agree with the study after a crash.

    Trials left RUNNING by a dead process are marked failed (and queued again); runs left
    half-written are replaced; finished trials without a run get one.
    """
    from mlflow.entities import ViewType

    storage = study._storage
    fixed = {"stale_trials": 0, "requeued": 0, "runs_written": 0, "runs_replaced": 0}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        fixed["stale_trials"] += 1
    # Parameters of trials that died are tried again (once each).
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        died = t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED_ATTR)
        if died and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            fixed["requeued"] += 1
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50_000,
    )
    have: dict[int, Any] = {}
    for run in runs:
        number = run.data.tags.get("optuna.trial_number")
        if number is None:
            continue
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.delete_run(run.info.run_id)
            fixed["runs_replaced"] += 1
            continue
        have[int(number)] = run
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for t in study.get_trials(deepcopy=False, states=finished):
        if t.number not in have:
            write_run(client, record(t))
            fixed["runs_written"] += 1
    return fixed
