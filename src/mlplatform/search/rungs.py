"""Multi-fidelity over training rows: each trial climbs rungs of growing subsamples.

A trial fits on rung 0 (say 1/9 of the train split), reports the validation value at step
``rows``, and goes on to the next rung only if that value is in the best
``1/reduction_factor`` of the trials that reached the same rung (asynchronous successive
halving, ``RungPruner``). The last rung is all rows; only trials that get there have a value,
so the best trial was always fit on all rows. Subsamples are stratified, seeded and nested.

Each rung is recorded on the trial (user attribute ``rungs``: rows, value, seconds, XGBoost's
best iteration) before it is reported, so a search killed mid-rung resumes without fitting
the rungs its retry already has (``reusable``), and the budget planner
(``search.budget``) predicts what a rung will cost from the rungs before it.

XGBoost stops early on the validation set (the rounds it used become ``n_estimators`` for
the train stage); forests grow each tree on at most ``forest_max_rows`` rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from mlplatform.evaluation.metrics import Objective, validation_metrics
from mlplatform.modeling import families
from mlplatform.search import interrupt
from mlplatform.search import space as search_space
from mlplatform.search.settings import FidelitySettings
from mlplatform.search.trial_runs import METRICS_ATTR

RUNGS_ATTR = "rungs"  # [{rung, rows, value, seconds, best_iteration, finished_at}]
FIT_PARAMS_ATTR = "fit_params"  # outcomes the train stage refits with (n_estimators, ...)
REUSED_ATTR = "reused_rungs"  # rungs a retried trial took from the trial that died
PRUNED_AT_ATTR = "pruned_at_rung"
BUDGET_ATTR = "budget"


class BudgetExhausted(Exception):
    """The next rung cannot finish inside tune.timeout_s (see search.budget)."""


# --------------------------------------------------------------------------------------
# Rungs: sizes and nested stratified subsamples (pure).


def rung_rows(n_rows: int, fractions: list[float], min_rows: int) -> list[int]:
    """Rows each rung fits on: increasing, the last all rows; small data merges rungs."""
    sizes: list[int] = []
    for f in fractions:
        m = n_rows if f >= 1.0 else min(n_rows, max(min_rows, round(f * n_rows)))
        if not sizes or m > sizes[-1]:
            sizes.append(m)
    return sizes


def rung_indices(y: np.ndarray, sizes: list[int], seed: int, min_class_rows: int) -> list:
    """Row indices of each rung: a stratified share of each class, but at least
    ``min_class_rows`` rows of a class (all of a rare class), so a rung of imbalanced data
    still holds enough positives to rank configurations. Nested and seeded."""
    rng = np.random.default_rng(seed)
    n = len(y)
    by_class = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    out: list = []
    for m in sizes[:-1]:
        parts = [
            idx[: min(len(idx), max(round(len(idx) * m / n), min_class_rows))]
            for idx in by_class.values()
        ]
        rows = np.sort(np.concatenate(parts))
        if len(rows) < n and (not out or len(rows) > len(out[-1])):  # rungs that merge
            out.append(rows)
    return [*out, slice(None)]


def plan(y: np.ndarray, cfg: FidelitySettings, seed: int) -> tuple[list[int], list]:
    """(rows of each rung, row indices of each rung) for these training labels."""
    rows_of = rung_indices(y, rung_rows(len(y), cfg.rungs, cfg.min_rows), seed, cfg.min_class_rows)
    return [len(r) for r in rows_of[:-1]] + [len(y)], rows_of


def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of the rows whose every prefix has the class mix of the whole.

    Each class is shuffled and its rows spread evenly over [0, 1); merging by that position
    interleaves the classes, so the first m rows are a stratified sample and rungs nest.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(y), dtype=float)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = rng.permutation(idx)
        keys[perm] = (np.arange(len(perm)) + rng.random()) / len(perm)
    return np.argsort(keys, kind="stable")


def subsets(y: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray | slice]:
    """Row indices of each rung (sorted; the last rung is every row)."""
    order = stratified_order(y, seed)
    out: list[np.ndarray | slice] = [np.sort(order[:m]) for m in sizes[:-1]]
    return [*out, slice(None)]


# --------------------------------------------------------------------------------------
# Promotion (pure) and the pruner.


def promote(
    value: float, others: list[float], direction: str, reduction_factor: float, min_trials: int
) -> bool:
    """Does a trial with ``value`` at a rung go on, given the other trials' values there?

    The first ``min_trials`` trials at a rung go on; after that a trial goes on when fewer
    than ``n / reduction_factor`` of the n trials at the rung (itself included) beat it.
    """
    n = len(others) + 1
    if n <= min_trials:
        return True
    if value != value:  # NaN never goes on
        return False
    keep = max(1, int(n // reduction_factor))
    if direction == "maximize":
        better = sum(1 for o in others if o > value)
    else:
        better = sum(1 for o in others if o < value)
    return better < keep


class RungPruner(BasePruner):
    """Successive halving on rung values (steps are rows), within each model family.

    Families are compared with each other only on all rows: on a small subsample a linear
    model often beats boosted trees that win on the whole data, and comparing across
    families at low rungs would prune the trees before they can show it.
    """

    def __init__(self, cfg: FidelitySettings) -> None:
        self.cfg = cfg

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not trial.intermediate_values:
            return False
        step = max(trial.intermediate_values)
        value = trial.intermediate_values[step]
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        family = trial.params.get(search_space.FAMILY_PARAM)
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=live)
            if t.number != trial.number
            and step in t.intermediate_values
            and t.params.get(search_space.FAMILY_PARAM) == family
        ]
        direction = study.direction.name.lower()
        cfg = self.cfg
        return not promote(value, others, direction, cfg.reduction_factor, cfg.min_trials)


# --------------------------------------------------------------------------------------
# One rung's fit.


def fit_rung(
    family: str,
    hp: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    metric: Objective,
    cfg: FidelitySettings,
    n_classes: int,
    class_weight: str,
    seed: int,
    n_jobs: int,
    check: Callable[[float], None] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Fit one configuration on one rung's rows.

    ``check(predicted seconds)`` runs between parts of the fit (chunks of trees, boosting
    rounds: ``families.fit_within``) and raises ``BudgetExhausted`` to stop it.

    Returns:
        (estimator, outcome hyperparameters to refit with, record without rung/rows).
    """
    hp = dict(hp)
    outcome: dict[str, Any] = {}
    kind = families.get(family)
    cap = cfg.forest_max_rows if kind.rows_per_tree else None
    if cap and "max_samples" not in hp and hp.get("bootstrap", True) and len(y) > cap:
        # Each tree on a bootstrap sample of at most cap rows (extra trees too: they
        # otherwise grow every tree on all rows, 8x the cost at 600,000 rows).
        hp["max_samples"] = outcome["max_samples"] = int(cfg.forest_max_rows)
        hp["bootstrap"] = outcome["bootstrap"] = True
    estimator = families.make_estimator(
        family, hp, y=y, n_classes=n_classes, class_weight=class_weight, seed=seed, n_jobs=n_jobs
    )
    fit_params = families.fit_kwargs(family, y, n_classes, class_weight, hp)
    early = kind.early_stopping and cfg.early_stopping_rounds is not None
    if early:
        # The unweighted log loss on the validation rows: smoother than a ranking metric on
        # a small validation set (HMDA: AP stopped at 10 rounds and lost on test), and not
        # weighted like training: with scale_pos_weight ~500 (0.2% positives) the weighted
        # loss stopped at 28 rounds (validation AP 0.47, against 0.81 at 297 rounds).
        name = "logloss" if n_classes == 2 else "mlogloss"
        estimator.set_params(early_stopping_rounds=cfg.early_stopping_rounds, eval_metric=name)
        fit_params = {**fit_params, "eval_set": [(x_valid, y_valid)], "verbose": False}
    t0 = time.perf_counter()
    if check is None:
        estimator.fit(x, y, **fit_params)
    else:
        families.fit_within(family, estimator, x, y, fit_params, check)
    proba = estimator.predict_proba(x_valid)
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {"value": float(metric.fn(y_valid, proba)), "seconds": seconds}
    if early:
        best = int(estimator.best_iteration)
        record["best_iteration"] = best
        outcome["n_estimators"] = best + 1
        # The refit (train stage) is an ordinary fit of best + 1 rounds: same trees.
        estimator.set_params(early_stopping_rounds=None, eval_metric=None)
    record["proba"] = proba
    return estimator, outcome, record


# --------------------------------------------------------------------------------------
# The objective.


def reusable(trial: optuna.Trial) -> dict[int, dict[str, Any]]:
    """Rungs the trial this one retries (a search killed mid-trial) already finished."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is None:
        return {}
    for t in trial.study.get_trials(deepcopy=False):
        if t.number == retry_of and t.params == trial.params:
            return {int(r["rung"]): r for r in t.user_attrs.get(RUNGS_ATTR, [])}
    return {}


def make_objective(
    params: Any,
    data: Any,
    spaces: dict[str, dict[str, Any]],
    metric: Objective,
    planner: Any = None,
) -> Callable[[optuna.Trial], float]:
    """The rung objective: fit rung by rung, report each, stop where the pruner says.

    Args:
        data: ``tune.SearchData`` (train/validation matrices and labels).
        planner: a ``budget.BudgetPlanner`` (None: no wall-clock budget).
    """
    cfg = params.tune
    fid = cfg.fidelity
    sizes, rows_of = plan(data.y_train, fid, params.seed)
    last = len(sizes) - 1

    def run_trial(trial: optuna.Trial) -> float:
        family, hp = search_space.suggest(trial, spaces)
        scaled = families.get(family).needs_scaling
        x_train, x_valid = data.x_train[scaled], data.x_valid[scaled]
        done = reusable(trial)
        records: list[dict[str, Any]] = []
        reused: list[int] = []
        for k, rows in enumerate(sizes):
            if k in done and done[k]["rows"] == rows:
                rec = done[k]
                reused.append(k)
                trial.set_user_attr(REUSED_ATTR, reused)
            else:
                check = None
                if planner is not None:
                    predicted = planner.check(trial, family, k, rows, records)
                    check = planner.stopper(family, k, predicted)
                idx = rows_of[k]
                _, outcome, rec = fit_rung(
                    family,
                    hp,
                    x_train[idx],
                    data.y_train[idx],
                    x_valid,
                    data.y_valid,
                    metric=metric,
                    cfg=fid,
                    n_classes=data.n_classes,
                    class_weight=cfg.class_weight,
                    seed=params.seed,
                    n_jobs=cfg.n_jobs,
                    check=check,
                )
                proba = rec.pop("proba")
                rec.update(rung=k, rows=rows, finished_at=time.time(), outcome=outcome)
                if k == last:
                    rec["metrics"] = validation_metrics(data.y_valid, proba)
            records.append(rec)
            # Recorded before it is reported: a kill after this line loses no rung.
            trial.set_user_attr(RUNGS_ATTR, records)
            trial.report(rec["value"], rows)
            if k < last and trial.should_prune():
                trial.set_user_attr(PRUNED_AT_ATTR, k)
                raise optuna.TrialPruned()
        final = records[-1]
        trial.set_user_attr(FIT_PARAMS_ATTR, final.get("outcome", {}))
        trial.set_user_attr(METRICS_ATTR, final["metrics"])
        return final["metrics"][metric.name]

    def budgeted(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except BudgetExhausted as exc:
            # Not started for lack of time: pruned where it stands, marked; cheaper trials
            # (another family, an earlier rung) may still fit, until Optuna's timeout.
            trial.set_user_attr(BUDGET_ATTR, str(exc))
            raise optuna.TrialPruned(str(exc)) from None

    return interrupt.guard(budgeted)
