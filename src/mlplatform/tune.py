"""Tune: an Optuna search over model families, every trial an MLflow run.

- One study per (search config, seed, data); its storage (a journal file by default,
  ``MLPLATFORM_OPTUNA_STORAGE`` for an RDB or Redis URL) lets a killed search continue:
  finished trials are kept, trials that died are recorded as failed (their runs KILLED) and
  their parameters are tried again.
- One parent MLflow run per study; one child run per trial, written by a background thread
  in batches once the trial ends (Optuna is the source of truth, MLflow a view of it, made
  whole again on resume). No run is left RUNNING.
- Seeded TPE; per-family percentile pruning (steps mean different things per family).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, NopPruner, PercentilePruner
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, TrialState

from mlplatform import families, search_space
from mlplatform.config import Params, Paths
from mlplatform.errors import MlplatformError
from mlplatform.features import build_preprocessor
from mlplatform.io import file_md5, write_json
from mlplatform.metrics import Objective, objective, validation_metrics
from mlplatform.prepare import DatasetSchema, load_schema, load_split
from mlplatform.schema import coerce
from mlplatform.tracking import RunRecord, TrackingWorker

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

PARENT_ATTR = "mlflow_parent_run_id"
INTERRUPTED_ATTR = "interrupted"
METRICS_ATTR = "valid_metrics"
ERROR_ATTR = "error"


# --------------------------------------------------------------------------------------
# Data prepared once per search.


@dataclass
class SearchData:
    schema: DatasetSchema
    y_train: np.ndarray
    y_valid: np.ndarray
    x_train: dict[bool, np.ndarray]
    x_valid: dict[bool, np.ndarray]

    @property
    def n_classes(self) -> int:
        return len(self.schema.classes)


def load_search_data(params: Params, paths: Paths, families_used: list[str]) -> SearchData:
    """Coerce and preprocess train/validation once per preprocessing variant."""
    schema = load_schema(paths)
    train, valid = load_split(paths, "train"), load_split(paths, "validation")
    ct, _ = coerce(train, schema.features)
    cv, _ = coerce(valid, schema.features)
    x_train, x_valid = {}, {}
    for scaled in sorted({families.NEEDS_SCALING[f] for f in families_used}):
        pre = build_preprocessor(schema.features, params.features, scale=scaled)
        x_train[scaled] = np.asarray(pre.fit_transform(ct), dtype=np.float64)
        x_valid[scaled] = np.asarray(pre.transform(cv), dtype=np.float64)
    return SearchData(
        schema=schema,
        y_train=schema.encode_target(train[schema.target]).to_numpy(),
        y_valid=schema.encode_target(valid[schema.target]).to_numpy(),
        x_train=x_train,
        x_valid=x_valid,
    )


# --------------------------------------------------------------------------------------
# Pruning that compares a trial only with trials of its own family.


class _FamilyView:
    """The parts of a Study a pruner reads, restricted to one family's trials."""

    def __init__(self, study: optuna.Study, family: Any) -> None:
        self._study = study
        self._family = family
        self.direction = study.direction
        self.directions = study.directions

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(search_space.FAMILY_PARAM) == self._family]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class FamilyPruner(BasePruner):
    """Delegates to a pruner that only sees trials of the same model family."""

    def __init__(self, inner: BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        family = trial.params.get(search_space.FAMILY_PARAM)
        return self.inner.prune(_FamilyView(study, family), trial)  # type: ignore[arg-type]


def make_pruner(params: Params) -> BasePruner:
    cfg = params.tune.pruner
    if not cfg.enabled:
        return NopPruner()
    return FamilyPruner(
        PercentilePruner(
            cfg.percentile,
            n_startup_trials=cfg.n_startup_trials,
            n_warmup_steps=cfg.n_warmup_steps,
        )
    )


# --------------------------------------------------------------------------------------
# The objective.


def make_objective(
    params: Params, data: SearchData, spaces: dict[str, dict[str, Any]], metric: Objective
) -> Callable[[optuna.Trial], float]:
    cfg = params.tune

    def run_trial(trial: optuna.Trial) -> float:
        family, hp = search_space.suggest(trial, spaces)
        scaled = families.NEEDS_SCALING[family]
        x_train, x_valid = data.x_train[scaled], data.x_valid[scaled]
        estimator = families.make_estimator(
            family,
            hp,
            y=data.y_train,
            n_classes=data.n_classes,
            class_weight=cfg.class_weight,
            seed=params.seed,
            n_jobs=cfg.n_jobs,
        )

        def report(step: int, proba: np.ndarray, final: bool) -> None:
            trial.report(metric.fn(data.y_valid, proba), step)
            if not final and trial.should_prune():
                raise optuna.TrialPruned()

        families.fit_reporting(
            family,
            estimator,
            x_train,
            data.y_train,
            x_valid,
            report,
            n_classes=data.n_classes,
            report_every=cfg.report_every,
            rf_steps=cfg.rf_steps,
            fit_params=families.fit_kwargs(family, data.y_train, data.n_classes, cfg.class_weight),
        )
        figures = validation_metrics(data.y_valid, estimator.predict_proba(x_valid))
        trial.set_user_attr(METRICS_ATTR, figures)
        return figures[metric.name]

    def guarded(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:500])
            raise
        except BaseException:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise

    return guarded


def run_search(
    study: optuna.Study,
    params: Params,
    data: SearchData,
    n_trials: int,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> optuna.Study:
    """Run n_trials more trials of the study (the core shared by tracked and untracked runs)."""
    spaces = search_space.parse(params.tune)
    metric = objective(params.tune.metric)
    if n_trials > 0:
        study.optimize(
            make_objective(params, data, spaces, metric),
            n_trials=n_trials,
            timeout=params.tune.timeout_s,
            callbacks=callbacks,
            catch=(Exception,),
            gc_after_trial=False,
            show_progress_bar=False,
        )
    return study


def new_study(params: Params, storage: Any = None, study_name: str | None = None) -> optuna.Study:
    metric = objective(params.tune.metric)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=make_pruner(params),
        direction=metric.direction,
        load_if_exists=study_name is not None,
    )


# --------------------------------------------------------------------------------------
# Storage, identity, locking.


class SingleWriterJournal(BaseJournalBackend):
    """Optuna's journal file for one writer at a time (``tune`` holds an exclusive lock).

    Same line format as ``JournalFileBackend`` (either can open the file), without its
    per-operation file lock, fsync and re-read, which cost about 0.2 ms per ``report`` and
    ``should_prune``: 5-6% of a search on the default data. Each append is flushed to the OS,
    so a killed process loses nothing; the file is fsynced when the search ends.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):  # a write cut short by a crash: drop the partial line
            with open(path, "r+b") as fh:
                fh.truncate(len(complete))
        self._logs = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self._fh = open(path, "ab")  # noqa: SIM115 (kept open for the search)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        yield from self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs)
        self._fh.write(text.encode("utf-8"))
        self._fh.flush()
        self._logs.extend(logs)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


def make_storage(paths: Paths) -> Any:
    """The study storage: MLPLATFORM_OPTUNA_STORAGE (RDB or redis URL) or a journal file."""
    url = os.environ.get("MLPLATFORM_OPTUNA_STORAGE")
    from optuna.storages import JournalStorage, RDBStorage

    if url and url.startswith("redis://"):
        from optuna.storages.journal import JournalRedisBackend

        return JournalStorage(JournalRedisBackend(url))
    if url:
        return RDBStorage(url)
    return JournalStorage(SingleWriterJournal(paths.optuna_journal))


def study_name(params: Params, paths: Paths) -> str:
    """Same search config, seed and data -> same study (so a re-run resumes it)."""
    from mlplatform.tracking import params_digest

    identity = {
        # n_trials is part of it: a search of 60 trials is not "the same" as one of 40 run
        # longer, and the same params must give the same result on any machine.
        "tune": params.tune.model_dump(mode="json", exclude={"timeout_s"}),
        "features": params.features.model_dump(mode="json"),
        "seed": params.seed,
        "data": {s: file_md5(paths.split(s)) for s in ("train", "validation")},
        "schema": file_md5(paths.schema),
    }
    return f"{params.mlflow.experiment}-{params_digest(identity)}"


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One search per project at a time (a second one would corrupt the resume logic)."""
    from mlplatform import registry

    busy = f"{lock_path}: another tune is running in this project; wait for it to finish"
    with registry.file_lock(lock_path, 0, busy):
        yield


@contextlib.contextmanager
def shared_study_lock(study: str) -> Iterator[None]:
    """With a shared PostgreSQL study storage (team mode), one driver per study across
    machines; a no-op for local storage (the project lock covers it)."""
    from mlplatform import registry

    url = os.environ.get("MLPLATFORM_OPTUNA_STORAGE")
    if not registry.is_postgres(url):
        yield
        return
    busy = (
        f"Optuna study '{study}': another tune is running it in the shared storage "
        "(MLPLATFORM_OPTUNA_STORAGE); wait for it to finish"
    )
    with registry.pg_advisory_lock(url, f"optuna-study:{study}", 0, busy):
        yield


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the current trial and parent run are closed as KILLED."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------
# Trials -> MLflow runs.


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
) -> RunRecord:
    """One finished trial as an MLflow run record (same names for every family)."""
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
    return RunRecord(
        experiment_id=experiment_id,
        run_name=f"trial-{trial.number:03d}-{family}",
        start_ms=start,
        end_ms=end,
        status=status,
        params={"family": family, **hp},
        metrics=metrics,
        step_metrics=[(f"intermediate_{metric.name}", v, int(s)) for s, v in steps],
        tags=tags,
    )


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

    from mlplatform.tracking import write_run

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


# --------------------------------------------------------------------------------------
# The stage.


def _counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Run (or resume) the study with full MLflow tracking; write reports/tune.json."""
    from mlplatform import tracking

    spaces = search_space.parse(params.tune)
    metric = objective(params.tune.metric)
    clock = time.perf_counter
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(paths.state / "tune.lock"))
        held.enter_context(sigterm_as_interrupt())
        t_load = clock()
        data = load_search_data(params, paths, list(spaces))
        t_setup = clock()
        name = study_name(params, paths)
        held.enter_context(shared_study_lock(name))
        study = new_study(params, make_storage(paths), name)
        # A resumed search must not replay the sampler's random start-up points: seed it by
        # how far the study already got (0 for a fresh study, so fresh runs are identical).
        done = len(study.get_trials(deepcopy=False))
        if done:
            study.sampler = optuna.samplers.TPESampler(seed=params.seed + done)
        client, exp_id = tracking.setup(params)
        writer = TrackingWorker(tracking.tracking_uri(params))
        parent_id = _parent_run(study, client, exp_id, params, paths, name)

        record = functools.partial(
            trial_record,
            experiment_id=exp_id,
            parent_run_id=parent_id,
            name=name,
            metric=metric,
            spaces=spaces,
        )

        fixed = reconcile(study, client, exp_id, parent_id, record)
        if any(fixed.values()):
            log.info("resumed study %s: %s", name, fixed)
        counts = _counts(study)
        remaining = max(0, params.tune.n_trials - counts["complete"] - counts["pruned"])
        log.info(
            "study %s: %d trials done, %d to run", name, params.tune.n_trials - remaining, remaining
        )

        def on_trial_end(s: optuna.Study, t: FrozenTrial) -> None:
            writer.submit(record(t))
            value = "-" if t.value is None else f"{t.value:.4f}"
            log.info("trial %d %s %s: %s", t.number, t.params.get("family"), t.state.name, value)

        t_search = clock()
        try:
            run_search(study, params, data, remaining, callbacks=[on_trial_end])
            t_drain = clock()
        except KeyboardInterrupt:
            writer.abandon()
            reconcile(study, client, exp_id, parent_id, record)
            client.set_terminated(parent_id, "KILLED")
            raise MlplatformError(
                f"search interrupted; run the same command again to resume study {name}"
            ) from None
        except BaseException:
            writer.abandon()
            raise
        t_finish = clock()
        summary = finish_parent(
            study, client, parent_id, metric, spaces, t_drain - t_search, writer, record
        )
        t_end = clock()
        backend = getattr(study._storage, "_backend", None)
        if isinstance(backend, SingleWriterJournal):
            backend.close()
    summary.update(study_name=name, parent_run_id=parent_id, experiment_id=exp_id)
    write_json(paths.tune_report, summary)
    # Where the time went (for bench/tracking_overhead.py); not part of tune.json.
    summary["timings"] = {
        "load_s": t_setup - t_load,
        "setup_s": t_search - t_setup,
        "search_s": t_drain - t_search,
        "drain_s": t_finish - t_drain,
        "finish_s": t_end - t_finish,
        "writer_busy_s": writer.seconds,
        "writer_runs": writer.written,
        "trials_run": remaining,
    }
    log.info(
        "best trial %d (%s): valid %s = %.4f",
        summary["best"]["number"],
        summary["best"]["family"],
        metric.name,
        summary["best"]["value"],
    )
    return summary


def _parent_run(
    study: optuna.Study, client: Any, exp_id: str, params: Params, paths: Paths, name: str
) -> str:
    from mlflow.exceptions import MlflowException

    from mlplatform import tracking

    parent_id = study.user_attrs.get(PARENT_ATTR)
    if parent_id:
        try:
            run = client.get_run(parent_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(parent_id, status="RUNNING")
                return parent_id
        except MlflowException:
            pass  # the tracking store was reset; start a new parent run
    tags = tracking.lineage(params, paths, {s: paths.split(s) for s in ("train", "validation")})
    tags.update({"optuna.study_name": name, "mlplatform.stage": "tune"})
    run = client.create_run(exp_id, run_name=f"search-{name}", tags=tags)
    parent_id = run.info.run_id
    cfg = params.tune
    from mlflow.entities import Param

    client.log_batch(
        parent_id,
        params=[
            Param("search.n_trials", str(cfg.n_trials)),
            Param("search.metric", cfg.metric),
            Param("search.direction", objective(cfg.metric).direction),
            Param("search.families", ",".join(cfg.families)),
            Param("search.sampler", "TPESampler"),
            Param("search.pruner", "FamilyPruner(Percentile)" if cfg.pruner.enabled else "none"),
            Param("search.class_weight", cfg.class_weight),
            Param("seed", str(params.seed)),
        ],
    )
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def best_trial(study: optuna.Study) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise MlplatformError(
            f"study {study.study_name}: no trial completed; see the FAILED runs' 'error' tags"
        ) from None


def finish_parent(
    study: optuna.Study,
    client: Any,
    parent_id: str,
    metric: Objective,
    spaces: dict[str, dict[str, Any]],
    search_s: float,
    worker: TrackingWorker,
    record: Callable[[FrozenTrial], RunRecord],
) -> dict[str, Any]:
    """Best trial, counts and plots onto the parent run; then mark it FINISHED.

    The worker renders the plots while this process logs the summary; then every trial's
    run is checked (``reconcile``) before the parent is marked FINISHED.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    best = best_trial(study)
    family, hp = search_space.plain_params(best.params, spaces)
    worker.plots(parent_id, study.get_trials(deepcopy=False), study.direction.name.lower(), family)
    counts = _counts(study)
    now = int(time.time() * 1000)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    history = [Metric("trial_value", float(t.value), now, t.number) for t in done]
    figures = best.user_attrs.get(METRICS_ATTR, {})
    metrics = [
        Metric(f"best_valid_{k}", float(v), now, 0) for k, v in figures.items() if math.isfinite(v)
    ]
    metrics += [Metric(f"n_{k}", float(v), now, 0) for k, v in counts.items()]
    metrics.append(Metric("search_seconds", search_s, now, 0))
    tags = [
        RunTag("best_trial_number", str(best.number)),
        RunTag("best_family", family),
        RunTag("mlplatform.stage", "tune"),
    ]
    best_params = [Param("best.family", family)] + [
        Param(f"best.{k}", str(v)) for k, v in hp.items()
    ]
    for i in range(0, len(history), 900):
        client.log_batch(parent_id, metrics=history[i : i + 900])
    client.log_batch(parent_id, metrics=metrics, tags=tags)
    try:
        client.log_batch(parent_id, params=best_params)
    except MlflowException:
        # Params are immutable: a resumed study found a new best. Keep it as tags.
        client.log_batch(parent_id, tags=[RunTag(p.key, p.value) for p in best_params])
    problems = worker.close()
    for problem in problems:
        log.warning("tracking helper: %s; rebuilding the runs from the study", problem)
    metrics_extra = [Metric("writer_seconds", worker.seconds, now, 0)]
    client.log_batch(parent_id, metrics=metrics_extra)
    if problems or worker.written != worker.submitted:
        exp_id = client.get_run(parent_id).info.experiment_id
        reconcile(study, client, exp_id, parent_id, record)
    client.set_terminated(parent_id, "FINISHED")
    return {
        "metric": metric.name,
        "direction": metric.direction,
        "best": {
            "number": best.number,
            "value": float(best.value),
            "family": family,
            "params": hp,
            "valid_metrics": figures,
        },
        "trials": counts,
    }


def search_plots(study: optuna.Study, best_family: str, folder: Path) -> list[Path]:
    """Optimisation history and hyperparameter importances (within the best family).

    Intermediate values are on each trial's run as step metrics (MLflow charts them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out: list[Path] = []

    def save(ax: Any, name: str) -> None:
        fig = ax.figure
        fig.set_size_inches(9, 5)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.12)
        path = folder / name
        fig.savefig(path, dpi=72)
        plt.close(fig)
        out.append(path)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(ovm.plot_optimization_history(study), "optimization_history.png")
        family_trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.params.get(search_space.FAMILY_PARAM) == best_family
        ]
        names = sorted({k for t in family_trials for k in t.params} - {search_space.FAMILY_PARAM})
        if len(family_trials) >= 2 and names:
            from optuna.importance import PedAnovaImportanceEvaluator

            sub = optuna.create_study(direction=study.direction)
            sub.add_trials(family_trials)
            try:
                ax = ovm.plot_param_importances(
                    sub, evaluator=PedAnovaImportanceEvaluator(), params=names
                )
                ax.set_title(f"Hyperparameter importances ({best_family})")
                save(ax, "param_importances.png")
            except (ValueError, RuntimeError) as exc:
                log.warning("parameter importances not plotted: %s", exc)
    return out
