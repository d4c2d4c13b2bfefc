"""What parallel search workers share: locks, the trial budget, dead trials, runs written once.

Optuna's storage is the source of truth and the only thing the workers coordinate through:

- the *claim* lock makes "count the budget, then ask for a trial" atomic, so the study ends
  with exactly ``tune.n_trials`` trials however many workers and machines take part;
- the *setup* lock is held while a ``tune`` opens the study and finds (or creates) the one
  parent MLflow run, and while it closes it; never during the search;
- the *runs* lock makes "is there a run for trial k? if not, write it" atomic, so every
  trial has exactly one child run, whether its worker wrote it or a later reconcile did.

With a PostgreSQL storage the locks are PostgreSQL advisory locks (they work across
machines); otherwise POSIX file locks in the project's state folder (one machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mlplatform import locks
from mlplatform.errors import MlplatformError
from mlplatform.postgres import is_postgres
from mlplatform.search.settings import WorkersSettings
from mlplatform.search.trial_runs import INTERRUPTED_ATTR, RunRecord, write_run

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # trial: which worker ran it (host:pid)
STALE_ATTR = "stale"  # trial: failed because its worker stopped beating
STARTED_ATTR = "workers_started"  # study: workers that ever joined (seeds each its own)
LOCK_TIMEOUT_S = 600.0


class StudyLocks:
    """The setup, claim and runs locks of one study (see the module docstring)."""

    def __init__(self, study: str, storage_url: str | None, state_dir: Path) -> None:
        self.study = study
        self.url = storage_url if is_postgres(storage_url) else None
        self.state_dir = Path(state_dir)

    @contextlib.contextmanager
    def _lock(self, kind: str) -> Iterator[None]:
        busy = (
            f"Optuna study '{self.study}': its {kind} lock was not free in {LOCK_TIMEOUT_S:.0f} s"
        )
        if self.url:
            with locks.pg_advisory_lock(
                self.url, f"optuna-{kind}:{self.study}", LOCK_TIMEOUT_S, busy
            ):
                yield
            return
        with locks.file_lock(self.state_dir / f"tune-{kind}.lock", LOCK_TIMEOUT_S, busy):
            yield

    def setup(self) -> contextlib.AbstractContextManager[None]:
        return self._lock("setup")

    def claim(self) -> contextlib.AbstractContextManager[None]:
        return self._lock("claim")

    def runs(self) -> contextlib.AbstractContextManager[None]:
        return self._lock("runs")


class LocalJournal(JournalFileBackend):
    """Optuna's journal file for several processes of one machine.

    Same file and format as ``JournalFileBackend`` (and the single search's journal), but
    each append is one ``O_APPEND`` write under a blocking POSIX lock, flushed to the OS and
    not fsynced: Optuna's own backend takes a symlink lock that backs off up to 1 s when
    two workers contend and fsyncs every operation (each pruning report). A killed process
    loses nothing; a machine crash may lose the last operations, as with the single
    search's journal.
    """

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs)
        fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)  # releases the lock


def open_storage(settings: WorkersSettings, journal: Path, url: str | None) -> Any:
    """The study storage for parallel workers.

    Local: Optuna's journal file shared by the workers (``LocalJournal``; same file and
    format as the single search's). RDB (PostgreSQL, sqlite): with heartbeats, so a killed
    worker's trial is failed after ``grace_period_s`` and tried again. Redis: a journal (no
    heartbeats).

    Raises:
        MlplatformError: the database refuses connections (one line, password masked).
    """
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalRedisBackend

    if not url:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(LocalJournal(str(journal)))
    if url.startswith("redis://"):
        return JournalStorage(JournalRedisBackend(url))
    import sqlalchemy as sa

    from mlplatform.team.database import masked

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=settings.heartbeat_interval_s,
                grace_period=settings.grace_period_s,
            )
    except sa.exc.OperationalError as exc:
        reason = (str(exc.orig).strip().splitlines() or ["no reason"])[0][:200]
        raise MlplatformError(
            f"MLPLATFORM_OPTUNA_STORAGE {masked(url)}: cannot connect ({reason})"
        ) from None


# --------------------------------------------------------------------------------------
# The budget and trials that died.


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards ``tune.n_trials``: finished, running, or failed by an error
    (an error is not retried; a trial whose worker died is, and does not count)."""
    used = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
            t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR)
        ):
            used += 1
    return used


def fail_dead(study: optuna.Study, trial_ids: list[int], stale: bool) -> list[int]:
    """Mark these RUNNING trials failed (interrupted) and queue their parameters again once.

    Returns:
        The numbers of the trials this call failed (another worker may have got there first).
    """
    storage = study._storage
    failed = []
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
            if stale:
                storage.set_trial_user_attr(trial_id, STALE_ATTR, True)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) meanwhile
        trial = storage.get_trial(trial_id)
        failed.append(trial.number)
        _requeue(study, trial)
    return failed


def _requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    if trial.params and trial.number not in retried:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the trials whose worker stopped sending heartbeats (RDB storage only)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    return fail_dead(study, storage._get_stale_trial_ids(study._study_id), stale=True)


def fail_running(study: optuna.Study, worker: str | None = None) -> list[int]:
    """Fail the RUNNING trials (of one worker, or all: no worker of them can be alive)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ids = [
        t._trial_id for t in running if worker is None or t.user_attrs.get(WORKER_ATTR) == worker
    ]
    return fail_dead(study, ids, stale=False)


# --------------------------------------------------------------------------------------
# Child runs: exactly one per trial.


def _trial_runs(client: Any, experiment_id: str, parent_run_id: str, number: int | None) -> list:
    from mlflow.entities import ViewType

    where = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if number is not None:
        where += f" and tags.optuna.trial_number = '{number}'"
    return client.search_runs(
        [experiment_id], filter_string=where, run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000
    )


def _finished(run: Any) -> bool:
    return run.info.status not in ("RUNNING", "SCHEDULED")


class WriteOnce:
    """Write a trial's run unless one is there already (under the runs lock)."""

    def __init__(self, study_locks: StudyLocks, parent_run_id: str) -> None:
        self.locks = study_locks
        self.parent_run_id = parent_run_id

    def __call__(self, client: Any, rec: RunRecord) -> str | None:
        number = int(rec.tags["optuna.trial_number"])
        with self.locks.runs():
            found = _trial_runs(client, rec.experiment_id, self.parent_run_id, number)
            if any(_finished(r) for r in found):
                return None
            for run in found:  # half-written by a writer that died
                client.delete_run(run.info.run_id)
            return write_run(client, rec)


def reconcile_runs(
    study: optuna.Study,
    client: Any,
    experiment_id: str,
    parent_run_id: str,
    record: Callable[[FrozenTrial], RunRecord],
    study_locks: StudyLocks,
) -> dict[str, int]:
    """Make the parent's child runs agree with the study: one finished run per finished
    trial (half-written runs and duplicates deleted, missing runs written from Optuna)."""
    fixed = {"runs_written": 0, "runs_replaced": 0, "duplicates_deleted": 0}
    with study_locks.runs():
        by_number: dict[int, list] = {}
        for run in _trial_runs(client, experiment_id, parent_run_id, None):
            number = run.data.tags.get("optuna.trial_number")
            if number is None:
                continue
            if not _finished(run):
                client.delete_run(run.info.run_id)
                fixed["runs_replaced"] += 1
                continue
            by_number.setdefault(int(number), []).append(run)
        for runs in by_number.values():
            for extra in sorted(runs, key=lambda r: r.info.start_time)[1:]:
                client.delete_run(extra.info.run_id)
                fixed["duplicates_deleted"] += 1
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for t in study.get_trials(deepcopy=False, states=done):
            if t.number not in by_number:
                write_run(client, record(t))
                fixed["runs_written"] += 1
    return fixed
