"""Parallel search: ``mlplatform tune --workers N`` on one machine or several.

``N`` (``--workers``, ``MLPLATFORM_TUNE_WORKERS`` or ``search_workers.workers``) worker
processes share one Optuna study and one parent MLflow run. Run the same command on
several machines with the same ``MLPLATFORM_OPTUNA_STORAGE`` (PostgreSQL) and
``MLFLOW_TRACKING_URI`` (the tracking server) and they all join that study.

- Setup (open the study, find or create the parent run, tidy what dead workers left) runs
  under the study's setup lock, held only for that; each worker then loops: under the
  claim lock, count the budget and ask Optuna for a trial; train it; write its child run.
- Each worker samples with its own seed (``seed`` + its index among all workers that ever
  joined the study) and TPE's constant liar (Optuna's default), so workers do not repeat
  each other's parameters. With more than one worker the order in which trials are
  suggested depends on timing: the study is not bit-for-bit reproducible (one worker is).
- Each worker gets cores // N threads (``n_jobs`` and the OpenMP/BLAS pools).
- A worker that dies: with an RDB storage its trial stops sending heartbeats and is failed
  after ``grace_period_s`` by whichever worker looks next; on this machine the ``tune``
  that started it fails it at once. Either way its parameters are queued again.
- Without a worker count (or with 1 and a local storage) ``tune`` is the single search of
  ``search/tune.py``, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from mlplatform import tracking
from mlplatform.config import Params, Paths
from mlplatform.errors import MlplatformError
from mlplatform.evaluation.metrics import Objective, objective
from mlplatform.io import read_json, write_json
from mlplatform.search import interrupt, shared, tune
from mlplatform.search import space as search_space
from mlplatform.search.pruning import make_pruner
from mlplatform.search.storage import exclusive, new_study, study_name
from mlplatform.search.trial_runs import TrackingWorker, trial_record
from mlplatform.tracking import datasets

log = logging.getLogger(__name__)

WORKERS_ENV = "MLPLATFORM_TUNE_WORKERS"
STORAGE_ENV = "MLPLATFORM_OPTUNA_STORAGE"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_count(params: Params, cli: int | None = None) -> int | None:
    """How many workers this ``tune`` runs; None = the single search of tune.run.

    Raises:
        MlplatformError: MLPLATFORM_TUNE_WORKERS is not a whole number >= 1.
    """
    if cli is not None:
        n = cli
    elif raw := os.environ.get(WORKERS_ENV, "").strip():
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise MlplatformError(f"{WORKERS_ENV}={raw!r}: expected a whole number >= 1")
    elif params.search_workers.workers is not None:
        n = params.search_workers.workers
    else:
        return None
    if n < 1:
        raise MlplatformError(f"--workers {n}: expected a whole number >= 1")
    if n == 1 and not os.environ.get(STORAGE_ENV):
        return None  # one local worker is the single search
    return n


def threads_per_worker(params: Params, n: int) -> int:
    if params.search_workers.threads is not None:
        return params.search_workers.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // n)


def run(params: Params, paths: Paths, workers: int | None = None) -> dict[str, Any]:
    """The tune stage: parallel workers when a worker count is set, else tune.run."""
    n = worker_count(params, workers)
    if n is None:
        return tune.run(params, paths)
    return run_parallel(params, paths, n)


# --------------------------------------------------------------------------------------
# The coordinator: one per machine.


def _record(params: Params, paths: Paths, exp_id: str, parent_id: str, name: str) -> Any:
    return functools.partial(
        trial_record,
        experiment_id=exp_id,
        parent_run_id=parent_id,
        name=name,
        metric=objective(params.tune.metric),
        spaces=search_space.parse(params.tune),
        datasets=datasets.split_inputs(params, paths, tune.SEARCH_SPLITS),
    )


def run_parallel(params: Params, paths: Paths, n: int) -> dict[str, Any]:
    """Start n workers on this machine in the shared study; close the parent if last."""
    url = os.environ.get(STORAGE_ENV) or None
    name = study_name(params, paths)
    locks = shared.StudyLocks(name, url, paths.state)
    threads = threads_per_worker(params, n)
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(paths.state / "tune.lock"))
        held.enter_context(interrupt.signals_as_interrupt())
        with locks.setup():
            storage = shared.open_storage(params.search_workers, paths.optuna_journal, url)
            study = new_study(params, storage, name)
            client, exp_id = tracking.setup(params)
            parent_id = tune._parent_run(study, client, exp_id, params, paths, name)
            record = _record(params, paths, exp_id, parent_id, name)
            with locks.claim():
                # Locally no worker of this study can be alive (the project lock); with a
                # shared storage only trials that stopped beating are dead.
                dead = shared.fail_running(study) if url is None else shared.fail_stale(study)
            fixed = shared.reconcile_runs(study, client, exp_id, parent_id, record, locks)
            if dead or any(fixed.values()):
                log.info("study %s: failed dead trials %s; runs %s", name, dead, fixed)
            first = int(study.user_attrs.get(shared.STARTED_ATTR, 0))
            study.set_user_attr(shared.STARTED_ATTR, first + n)
        spec = {
            "params": params.model_dump(mode="json"),
            "root": str(paths.root.resolve()),
            "study": name,
            "storage": url,
            "tracking_uri": tracking.tracking_uri(params),
            "experiment_id": exp_id,
            "parent_run_id": parent_id,
            "threads": threads,
        }
        spec_path = paths.state / f"tune-workers-{os.getpid()}.json"
        write_json(spec_path, spec)
        log.info("study %s: %d workers of %d thread(s) each", name, n, threads)
        t_search = time.perf_counter()
        procs = {first + i: _spawn(spec_path, first + i, threads) for i in range(n)}
        try:
            codes = _wait(procs, study, locks)
        except KeyboardInterrupt:
            _stop(procs)
            with locks.claim():
                for index in procs:
                    shared.fail_running(study, _worker_id(procs[index].pid))
            shared.reconcile_runs(study, client, exp_id, parent_id, record, locks)
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                client.set_terminated(parent_id, "KILLED")  # no other machine is searching
            raise MlplatformError(
                f"search interrupted; run the same command again to resume study {name}"
            ) from None
        search_s = time.perf_counter() - t_search
        log.info("study %s: this machine's workers ended after %.1f s", name, search_s)
        reports = _worker_reports(study, procs, codes, threads)
        spec_path.unlink(missing_ok=True)
        if all(code != 0 for code in codes.values()):
            raise MlplatformError(
                f"study {name}: all {n} search workers failed (exit codes "
                f"{sorted(codes.values())}); see their messages above"
            )
        with locks.setup():
            with locks.claim():
                shared.fail_stale(study)
            summary = _finish(study, client, exp_id, parent_id, record, locks, params, search_s)
    log.info("study %s: closed in %.1f s", name, time.perf_counter() - t_search - search_s)
    summary.update(study_name=name, parent_run_id=parent_id, experiment_id=exp_id)
    summary["workers"] = reports
    write_json(paths.tune_report, summary)
    return summary


def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _spawn(spec_path: Path, index: int, threads: int) -> subprocess.Popen:
    from mlplatform.search.trial_runs import _die_with_parent

    env = {**os.environ, **dict.fromkeys(THREAD_VARS, str(threads))}
    parent = os.getpid()
    return subprocess.Popen(
        [sys.executable, "-m", "mlplatform.search.workers", str(spec_path), str(index)],
        env=env,
        preexec_fn=lambda: _die_with_parent(parent),  # a killed tune takes its workers along
    )


def _wait(procs: dict[int, subprocess.Popen], study: optuna.Study, locks: Any) -> dict[int, int]:
    """Wait for the workers; a worker that dies has its running trial failed at once."""
    codes: dict[int, int] = {}
    while len(codes) < len(procs):
        for index, proc in procs.items():
            if index in codes or (code := proc.poll()) is None:
                continue
            codes[index] = code
            if code != 0:
                with locks.claim():
                    failed = shared.fail_running(study, _worker_id(proc.pid))
                log.warning(
                    "search worker %d exited with %s; its trial(s) %s failed and queued again",
                    index,
                    f"signal {-code}" if code < 0 else f"code {code}",
                    failed or "none",
                )
        time.sleep(0.2)
    return codes


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _worker_reports(
    study: optuna.Study, procs: dict[int, subprocess.Popen], codes: dict[int, int], threads: int
) -> list[dict[str, Any]]:
    """Which trials each worker of this machine ran (from the study: a killed worker too)."""
    trials = study.get_trials(deepcopy=False)
    return [
        {
            "index": index,
            "pid": proc.pid,
            "exit_code": codes.get(index),
            "threads": threads,
            "trials": [
                t.number
                for t in trials
                if t.user_attrs.get(shared.WORKER_ATTR) == _worker_id(proc.pid)
            ],
        }
        for index, proc in procs.items()
    ]


def _summary(study: optuna.Study, params: Params) -> dict[str, Any]:
    return tune.search_summary(
        study, search_space.parse(params.tune), objective(params.tune.metric)
    )


def _finish(
    study: optuna.Study,
    client: Any,
    exp_id: str,
    parent_id: str,
    record: Any,
    locks: shared.StudyLocks,
    params: Params,
    search_s: float,
) -> dict[str, Any]:
    """Reconcile the runs; the last coordinator to finish closes the parent run."""
    shared.reconcile_runs(study, client, exp_id, parent_id, record, locks)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    status = client.get_run(parent_id).info.status
    if running:
        log.info(
            "%d trial(s) still running in other workers: the last to finish closes the parent",
            len(running),
        )
        summary = _summary(study, params)
        summary["parent_status"] = status
        return summary
    if status == "FINISHED":
        summary = _summary(study, params)
    else:
        metric: Objective = objective(params.tune.metric)
        writer = TrackingWorker(
            tracking.tracking_uri(params), write=shared.WriteOnce(locks, parent_id)
        )
        spaces = search_space.parse(params.tune)
        summary = tune.finish_parent(
            study, client, parent_id, metric, spaces, search_s, writer, record
        )
    summary["parent_status"] = "FINISHED"
    return summary


# --------------------------------------------------------------------------------------
# A worker process.


def run_one(study: optuna.Study, trial: optuna.Trial, func: Any) -> FrozenTrial:
    """Run one asked trial (with heartbeats on RDB) and tell Optuna how it ended."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    state, value = None, None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = func(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as exc:
            log.warning("trial %d failed: %s", trial.number, exc)
            state = TrialState.FAIL
        except KeyboardInterrupt:
            # Stopped: failed as interrupted and queued again, as the tune fails the trials
            # of a stopped worker (whichever gets there first; the budget skips them).
            shared.fail_dead(study, [trial._trial_id], stale=False)
            raise
    try:
        if state is None:
            return study.tell(trial, value)
        return study.tell(trial, state=state)
    except (ValueError, UpdateFinishedTrialError):
        # Failed meanwhile by another worker (its heartbeat looked stale): keep that verdict.
        log.warning("trial %d was failed by another worker while it ran", trial.number)
        return study._storage.get_trial(trial._trial_id)


def work(spec: dict[str, Any], index: int) -> int:
    """One worker: claim trials from the shared budget until it is spent."""
    import warnings

    # ask/tell with our own heartbeat thread (run_one) is what Study.optimize does.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    params = Params.model_validate(spec["params"])
    threads = int(spec["threads"])
    params = params.model_copy(update={"tune": params.tune.model_copy(update={"n_jobs": threads})})
    paths = Paths(spec["root"])
    name, url = spec["study"], spec["storage"]
    locks = shared.StudyLocks(name, url, paths.state)
    spaces = search_space.parse(params.tune)
    metric = objective(params.tune.metric)
    data = tune.load_search_data(params, paths, list(spaces))
    storage = shared.open_storage(params.search_workers, paths.optuna_journal, url)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=params.seed + index, constant_liar=True),
        pruner=make_pruner(params),
    )
    record = _record(params, paths, spec["experiment_id"], spec["parent_run_id"], name)
    writer = TrackingWorker(
        spec["tracking_uri"],
        write=shared.WriteOnce(locks, spec["parent_run_id"]),
        plots=False,
    )
    func = tune.search_objective(params, data, spaces, metric)
    me = _worker_id(os.getpid())
    deadline = time.monotonic() + (params.tune.timeout_s or float("inf"))
    # Without heartbeats a shared storage cannot tell a dead worker from a slow one: do not
    # wait for other workers' trials there (locally the tune fails its dead workers' trials).
    can_wait = url is None or is_heartbeat_enabled(storage)
    code = 0
    try:
        while time.monotonic() < deadline:
            interrupt.raise_if_requested()  # a stop a library swallowed
            trial = None
            with locks.claim():
                shared.fail_stale(study)
                if shared.budget_used(study) < params.tune.n_trials:
                    trial = study.ask()
                    trial.set_user_attr(shared.WORKER_ATTR, me)
                elif not can_wait or not study.get_trials(
                    deepcopy=False, states=(TrialState.RUNNING,)
                ):
                    break
            if trial is None:
                # The budget is spent but trials still run: one whose worker dies is
                # queued again, and this worker takes it.
                time.sleep(0.5)
                continue
            done = run_one(study, trial, func)
            writer.submit(record(done))
            value = "-" if done.value is None else f"{done.value:.4f}"
            log.info(
                "worker %d: trial %d %s %s: %s",
                index,
                done.number,
                done.params.get("family"),
                done.state.name,
                value,
            )
    except KeyboardInterrupt:
        writer.abandon()
        code = 130
    else:
        t_close = time.perf_counter()
        for problem in writer.close():
            log.warning(
                "worker %d tracking helper: %s (its runs are rebuilt at the end)", index, problem
            )
        log.info(
            "worker %d: %d run(s) written, %.1f s after its last trial",
            index,
            writer.written,
            time.perf_counter() - t_close,
        )
    return code


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    spec_path, index = Path(argv[0]), int(argv[1])
    try:
        with interrupt.signals_as_interrupt():
            return work(read_json(spec_path), index)
    except MlplatformError as exc:
        print(f"error: worker {index}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
