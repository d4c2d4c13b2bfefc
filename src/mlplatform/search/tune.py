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
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from mlplatform import tracking
from mlplatform.config import Params, Paths
from mlplatform.data.dataset import DatasetSchema, load_schema, load_split
from mlplatform.errors import MlplatformError
from mlplatform.evaluation.metrics import Objective, objective, validation_metrics
from mlplatform.io import write_json
from mlplatform.modeling import families
from mlplatform.modeling.features import design_matrices
from mlplatform.search import budget, interrupt, rungs
from mlplatform.search import space as search_space
from mlplatform.search.storage import (
    SingleWriterJournal,
    exclusive,
    make_storage,
    new_study,
    shared_study_lock,
    study_name,
)
from mlplatform.search.trial_runs import (
    METRICS_ATTR,
    PARENT_ATTR,
    RunRecord,
    TrackingWorker,
    reconcile,
    trial_record,
)
from mlplatform.tracking import datasets

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH_SPLITS = ("train", "validation")


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
    scales = {families.get(f).needs_scaling for f in families_used}
    matrices = design_matrices(schema.features, params.features, train, valid, scales)
    return SearchData(
        schema=schema,
        y_train=schema.encode_target(train[schema.target]).to_numpy(),
        y_valid=schema.encode_target(valid[schema.target]).to_numpy(),
        x_train={scale: x for scale, (_, x, _) in matrices.items()},
        x_valid={scale: x for scale, (_, _, x) in matrices.items()},
    )


# --------------------------------------------------------------------------------------
# The objective.


def make_objective(
    params: Params, data: SearchData, spaces: dict[str, dict[str, Any]], metric: Objective
) -> Callable[[optuna.Trial], float]:
    cfg = params.tune

    def run_trial(trial: optuna.Trial) -> float:
        family, hp = search_space.suggest(trial, spaces)
        scaled = families.get(family).needs_scaling
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
            fit_params=families.fit_kwargs(
                family, data.y_train, data.n_classes, cfg.class_weight, hp
            ),
        )
        figures = validation_metrics(data.y_valid, estimator.predict_proba(x_valid))
        trial.set_user_attr(METRICS_ATTR, figures)
        return figures[metric.name]

    return interrupt.guard(run_trial)


def search_objective(
    params: Params, data: SearchData, spaces: dict[str, Any], metric: Objective
) -> Callable[[optuna.Trial], float]:
    """The trial function of a search (one process or a worker): rungs over rows and early
    stopping when ``tune.fidelity`` is on (``search.rungs``), else one fit per trial."""
    if params.tune.fidelity.active:
        return rungs.make_objective(params, data, spaces, metric, budget.planner_for(params))
    return make_objective(params, data, spaces, metric)


def run_search(
    study: optuna.Study,
    params: Params,
    data: SearchData,
    n_trials: int,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> optuna.Study:
    """Run n_trials more trials of the study (the core shared by tracked and untracked runs)."""
    spaces = search_space.parse(params.tune)
    fn = search_objective(params, data, spaces, objective(params.tune.metric))
    if n_trials > 0:
        study.optimize(
            fn,
            n_trials=n_trials,
            timeout=params.tune.timeout_s,
            callbacks=callbacks,
            catch=(Exception,),
            gc_after_trial=False,
            show_progress_bar=False,
        )
    return study


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
    spaces = search_space.parse(params.tune)
    metric = objective(params.tune.metric)
    clock = time.perf_counter
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(paths.state / "tune.lock"))
        held.enter_context(interrupt.signals_as_interrupt())
        t_load = clock()
        data = load_search_data(params, paths, list(spaces))
        t_setup = clock()
        name = study_name(params, paths)
        held.enter_context(shared_study_lock(name))
        study = new_study(params, make_storage(paths), name)
        # A resumed search must not replay the sampler's random start-up points: seed it by
        # how far the study already got (0 for a fresh study, so fresh runs are identical).
        # (The start points a fresh study queued are not trials run yet.)
        waiting = (TrialState.WAITING,)
        done = len(study.get_trials(deepcopy=False)) - len(
            study.get_trials(deepcopy=False, states=waiting)
        )
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
            datasets=datasets.split_inputs(params, paths, SEARCH_SPLITS),
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

    parent_id = study.user_attrs.get(PARENT_ATTR)
    if parent_id:
        try:
            run = client.get_run(parent_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(parent_id, status="RUNNING")
                return parent_id
        except MlflowException:
            pass  # the tracking store was reset; start a new parent run
    tags = tracking.lineage(
        params, paths, {s: paths.split(s) for s in SEARCH_SPLITS}, upstream=("ingest", "prepare")
    )
    tags.update({"optuna.study_name": name, "mlplatform.stage": "tune"})
    run = client.create_run(exp_id, run_name=f"search-{name}", tags=tags)
    parent_id = run.info.run_id
    datasets.log_splits(client, parent_id, params, paths, SEARCH_SPLITS)
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
            Param("search.pruner", _pruner_name(cfg)),
            Param("search.class_weight", cfg.class_weight),
            Param("seed", str(params.seed)),
        ],
    )
    study.set_user_attr(PARENT_ATTR, parent_id)
    return parent_id


def _pruner_name(cfg: Any) -> str:
    if cfg.fidelity.active:
        return f"RungPruner(rungs={cfg.fidelity.rungs}, eta={cfg.fidelity.reduction_factor})"
    return "FamilyPruner(Percentile)" if cfg.pruner.enabled else "none"


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

    summary = search_summary(study, spaces, metric)
    best = summary["best"]
    family, hp, figures, counts = (
        best["family"],
        best["params"],
        best["valid_metrics"],
        summary["trials"],
    )
    worker.plots(parent_id, study.get_trials(deepcopy=False), study.direction.name.lower(), family)
    now = int(time.time() * 1000)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    history = [Metric("trial_value", float(t.value), now, t.number) for t in done]
    metrics = [
        Metric(f"best_valid_{k}", float(v), now, 0) for k, v in figures.items() if math.isfinite(v)
    ]
    metrics += [Metric(f"n_{k}", float(v), now, 0) for k, v in counts.items()]
    metrics.append(Metric("search_seconds", search_s, now, 0))
    tags = [
        RunTag("best_trial_number", str(best["number"])),
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
    return summary


def search_summary(
    study: optuna.Study, spaces: dict[str, Any], metric: Objective
) -> dict[str, Any]:
    """What tune.json says of a study (one search or its workers): the objective, the best
    trial (family, params with the rounds and rows its fit used, validation metrics) and the
    trial counts."""
    best = best_trial(study)
    family, hp = search_space.plain_params(best.params, spaces)
    hp.update(best.user_attrs.get(rungs.FIT_PARAMS_ATTR, {}))  # rounds used, rows per tree
    return {
        "metric": metric.name,
        "direction": metric.direction,
        "best": {
            "number": best.number,
            "value": float(best.value),
            "family": family,
            "params": hp,
            "valid_metrics": best.user_attrs.get(METRICS_ATTR, {}),
        },
        "trials": _counts(study),
    }
