"""Model families: the one table every stage asks what a family is.

Each entry says how the family's estimator is built and weighted for imbalance, which
hyperparameters it accepts, whether it needs scaled inputs, how it is fitted step by step
(so the search can prune it), which SHAP explainer is exact for it and what its SHAP values
add up to, how the logged model stores it, and what the logged model must install.
Adding a family means adding one entry here.

Fitting calls ``report(step, proba_valid, final)`` at the family's natural steps (never
``final`` before the work is done): XGBoost every ``report_every`` boosting rounds, random
forests after each chunk of trees (warm start gives the same forest as one fit), logistic
regression once (it is fast enough not to need pruning).

Heavy libraries (scikit-learn estimators, XGBoost) are imported when a family is used,
not when the table is read: ``config`` reads the family names on every command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Report = Callable[[int, np.ndarray, bool], None]


@dataclass(frozen=True)
class Family:
    """What one model family is.

    Attributes:
        name: the key used in params.yaml (``tune.families``) and in model.json.
        needs_scaling: standardise numeric inputs (linear models) or not (trees).
        hyperparameters: the names params.yaml may search or fix for it.
        explainer: the SHAP explainer that is exact for it (``tree`` or ``linear``).
        shap_output: what its SHAP values add up to (``log-odds`` or ``probability``).
        native_format: the logged model stores it in XGBoost's own format (estimator.ubj)
            instead of skops.
        requirements: distributions the logged model needs beyond the common ones.
        multiclass_sample_weights: balanced class weights go in as per-row sample weights
            when there are more than two classes (the estimator has no class weights then).
        rows_per_tree: each tree can be grown on a capped bootstrap sample of rows
            (``max_samples``, ``bootstrap``): the search caps it at
            ``tune.fidelity.forest_max_rows``.
        early_stopping: boosting that stops on the validation set in the search (the rounds
            it used become ``n_estimators`` of the refit).
    """

    name: str
    needs_scaling: bool
    hyperparameters: frozenset[str]
    explainer: str
    shap_output: str
    native_format: bool
    requirements: tuple[str, ...]
    multiclass_sample_weights: bool
    build: Callable[..., Any]
    fit_steps: Callable[..., Any]
    rows_per_tree: bool = False
    early_stopping: bool = False


# A hyperparameter every family accepts: "balanced" or "none" for this configuration,
# overriding ``tune.class_weight`` (so the search can choose; see ``class_weight_of``).
CLASS_WEIGHT = "class_weight"
CLASS_WEIGHTS = ("balanced", "none")


def _class_weights(y: np.ndarray) -> dict[Any, float]:
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(y)
    weights = compute_class_weight("balanced", classes=classes, y=y)
    return dict(zip(classes.tolist(), weights, strict=True))


def _build_logistic(hp: dict[str, Any], *, y, n_classes, balanced, seed, n_jobs) -> Any:
    from sklearn.linear_model import LogisticRegression

    params = {"max_iter": 2000, **hp}
    return LogisticRegression(
        class_weight="balanced" if balanced else None, random_state=seed, **params
    )


def _build_forest(hp: dict[str, Any], *, y, n_classes, balanced, seed, n_jobs) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    # An explicit dict equals "balanced" and is safe with warm start (pruning steps).
    weights = _class_weights(y) if balanced else None
    return RandomForestClassifier(class_weight=weights, random_state=seed, n_jobs=n_jobs, **hp)


def _build_extra_trees(hp: dict[str, Any], *, y, n_classes, balanced, seed, n_jobs) -> Any:
    from sklearn.ensemble import ExtraTreesClassifier

    weights = _class_weights(y) if balanced else None
    return ExtraTreesClassifier(class_weight=weights, random_state=seed, n_jobs=n_jobs, **hp)


def _build_xgboost(hp: dict[str, Any], *, y, n_classes, balanced, seed, n_jobs) -> Any:
    import xgboost as xgb

    params: dict[str, Any] = {"tree_method": "hist", "random_state": seed, "n_jobs": n_jobs, **hp}
    if n_classes == 2:
        params["objective"] = "binary:logistic"
        if balanced:
            pos = max(int(np.sum(y == 1)), 1)
            params["scale_pos_weight"] = float((len(y) - pos) / pos)
    else:
        params["objective"] = "multi:softprob"
    return xgb.XGBClassifier(**params)


def _as_proba(raw: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2 and raw.ndim == 1:
        return np.column_stack([1 - raw, raw])
    return raw


def _fit_once(estimator, x_train, y_train, x_valid, report, *, n_classes, steps, fit_params):
    estimator.fit(x_train, y_train, **fit_params)
    report(1, estimator.predict_proba(x_valid), True)
    return estimator


def grow_forest(
    estimator: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    fit_params: dict[str, Any],
    fractions: list[float],
    before: Callable[[int, int], None] | None = None,
    after: Callable[[int], None] | None = None,
) -> Any:
    """Grow a scikit-learn forest in warm-started chunks, to ``fractions`` (increasing, the
    last 1.0) of its trees: the same forest as one fit (each new tree draws the seed it
    would have drawn). ``before(grown, target)`` runs before each chunk and ``after(grown)``
    after it; either may raise to stop the fit."""
    total = estimator.get_params()["n_estimators"]
    estimator.set_params(warm_start=True)
    grown = 0
    try:
        for f in fractions:
            n = max(1, math.ceil(total * f))
            if n <= grown:
                continue
            if before is not None:
                before(grown, n)
            estimator.set_params(n_estimators=n)
            estimator.fit(x_train, y_train, **fit_params)
            grown = n
            if after is not None:
                after(n)
    finally:
        estimator.set_params(warm_start=False)
    return estimator


def _fit_forest(estimator, x_train, y_train, x_valid, report, *, n_classes, steps, fit_params):
    total = estimator.get_params()["n_estimators"]

    def after(n: int) -> None:
        report(n, estimator.predict_proba(x_valid), n >= total)

    chunks = steps["rf_steps"]
    fractions = [k / chunks for k in range(1, chunks + 1)]
    return grow_forest(estimator, x_train, y_train, fit_params, fractions, after=after)


def _fit_xgboost(estimator, x_train, y_train, x_valid, report, *, n_classes, steps, fit_params):
    import xgboost as xgb

    total = int(estimator.get_params()["n_estimators"] or 100)
    every = steps["report_every"]

    class Reporting(xgb.callback.TrainingCallback):
        def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
            rounds = epoch + 1
            if rounds % every == 0 or rounds == total:
                raw = model.inplace_predict(x_valid, iteration_range=(0, rounds))
                report(rounds, _as_proba(raw, n_classes), rounds == total)
            return False

    return _fit_xgboost_with(estimator, Reporting(), x_train, y_train, fit_params)


def _fit_xgboost_with(estimator, callback, x_train, y_train, fit_params) -> Any:
    """Fit an XGBoost estimator with a training callback, leaving none on it afterwards."""
    estimator.set_params(callbacks=[callback])
    try:
        estimator.fit(x_train, y_train, **fit_params)
    finally:
        estimator.set_params(callbacks=None)
    return estimator


# What scikit-learn's two forests share.
_FOREST_HP = frozenset(
    {
        "n_estimators",
        "max_depth",
        "min_samples_leaf",
        "min_samples_split",
        "max_features",
        "max_samples",
        "criterion",
    }
)
_FOREST: dict[str, Any] = {
    "needs_scaling": False,
    "explainer": "tree",
    "shap_output": "probability",
    "native_format": False,
    "requirements": (),
    "multiclass_sample_weights": False,
    "fit_steps": _fit_forest,
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="logistic_regression",
            needs_scaling=True,
            hyperparameters=frozenset({"C", "l1_ratio", "max_iter", "tol"}),
            explainer="linear",
            shap_output="log-odds",
            native_format=False,
            requirements=(),
            multiclass_sample_weights=False,
            build=_build_logistic,
            fit_steps=_fit_once,
        ),
        Family(
            name="random_forest",
            hyperparameters=_FOREST_HP,
            build=_build_forest,
            rows_per_tree=True,
            **_FOREST,
        ),
        Family(
            # Split points drawn at random: a fraction of a forest's cost per tree, and
            # often the better ranking on wide, noisy data (synthetic_fraud: test AP 0.92
            # against a random forest's 0.78 at 100 trees, docs/benchmarks.md).
            name="extra_trees",
            hyperparameters=_FOREST_HP | {"bootstrap"},
            build=_build_extra_trees,
            rows_per_tree=True,
            **_FOREST,
        ),
        Family(
            name="xgboost",
            needs_scaling=False,
            hyperparameters=frozenset(
                {
                    "n_estimators",
                    "max_depth",
                    "learning_rate",
                    "subsample",
                    "colsample_bytree",
                    "colsample_bylevel",
                    "min_child_weight",
                    "reg_lambda",
                    "reg_alpha",
                    "gamma",
                    "max_bin",
                    "grow_policy",
                    "max_leaves",
                }
            ),
            explainer="tree",
            shap_output="log-odds",
            native_format=True,
            requirements=("xgboost-cpu",),
            multiclass_sample_weights=True,
            build=_build_xgboost,
            fit_steps=_fit_xgboost,
            early_stopping=True,
        ),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def get(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: not a known family (params.yaml is validated against FAMILY_NAMES
            first, so this means a model or study from another version).
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}") from None


def class_weight_of(hp: dict[str, Any], default: str) -> tuple[dict[str, Any], str]:
    """(hyperparameters without ``class_weight``, the weighting this configuration uses)."""
    hp = dict(hp)
    return hp, str(hp.pop(CLASS_WEIGHT, default))


def make_estimator(
    family: str,
    hp: dict[str, Any],
    *,
    y: np.ndarray,
    n_classes: int,
    class_weight: str,
    seed: int,
    n_jobs: int,
) -> Any:
    """An unfitted estimator with the imbalance handling params.yaml (or the
    configuration's own ``class_weight``) asks for."""
    hp, class_weight = class_weight_of(hp, class_weight)
    return get(family).build(
        hp, y=y, n_classes=n_classes, balanced=class_weight == "balanced", seed=seed, n_jobs=n_jobs
    )


def fit_kwargs(
    family: str,
    y: np.ndarray,
    n_classes: int,
    class_weight: str,
    hp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Extra fit arguments: balanced sample weights where the family takes them."""
    class_weight = class_weight_of(hp or {}, class_weight)[1]
    if get(family).multiclass_sample_weights and n_classes > 2 and class_weight == "balanced":
        from sklearn.utils.class_weight import compute_sample_weight

        return {"sample_weight": compute_sample_weight("balanced", y)}
    return {}


def fit_reporting(
    family: str,
    estimator: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    report: Report,
    *,
    n_classes: int,
    report_every: int,
    rf_steps: int,
    fit_params: dict[str, Any],
) -> Any:
    """Fit, calling ``report(step, validation probabilities, final)`` along the way.

    ``report`` may raise (for example ``optuna.TrialPruned``) to stop the fit early.
    """
    return get(family).fit_steps(
        estimator,
        x_train,
        y_train,
        x_valid,
        report,
        n_classes=n_classes,
        steps={"report_every": report_every, "rf_steps": rf_steps},
        fit_params=fit_params,
    )


# A fit that stops when the wall-clock budget runs out (the search's budget planner): a
# forest grows to these fractions of its trees, a small first chunk (the cost of a
# configuration is known only once some of it is grown), then eighths.
FOREST_CHUNKS = [1 / 32, *(k / 8 for k in range(1, 9))]


def fit_within(
    family: str,
    estimator: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    fit_params: dict[str, Any],
    check: Callable[[float], None],
) -> Any:
    """Fit, calling ``check(predicted seconds of the next part)`` between parts of the work:
    forests between chunks of trees (``FOREST_CHUNKS``: the same forest as one fit), XGBoost
    after every boosting round; ``check`` raises to stop. Logistic regression fits at once.
    The prediction is the time per tree (per round) so far times the trees (one round) next.
    """
    kind = get(family)
    start = time.perf_counter()
    if kind.rows_per_tree:

        def before(grown: int, target: int) -> None:
            if grown:
                check((time.perf_counter() - start) / grown * (target - grown))

        return grow_forest(estimator, x_train, y_train, fit_params, FOREST_CHUNKS, before=before)
    if kind.native_format:  # XGBoost: a training callback between rounds
        import xgboost as xgb

        class Deadline(xgb.callback.TrainingCallback):
            def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
                check((time.perf_counter() - start) / (epoch + 1))
                return False

        return _fit_xgboost_with(estimator, Deadline(), x_train, y_train, fit_params)
    estimator.fit(x_train, y_train, **fit_params)
    return estimator
