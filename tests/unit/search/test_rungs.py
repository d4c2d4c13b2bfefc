"""Multi-fidelity search: rung sizes and subsamples, promotion, bookkeeping, determinism."""

from __future__ import annotations

import types

import numpy as np
import pytest
from optuna.trial import TrialState

from mlplatform.evaluation.metrics import objective
from mlplatform.modeling import families
from mlplatform.search import rungs, storage, trial_runs, tune
from mlplatform.search import space as search_space
from support.small_search import small_data, small_params

# --------------------------------------------------------------------------------------
# Pure parts.


def test_rung_rows_increase_and_end_with_all_rows():
    assert rungs.rung_rows(9000, [1 / 9, 1 / 3, 1.0], 200) == [1000, 3000, 9000]
    # min_rows lifts small rungs; rungs that become equal merge.
    assert rungs.rung_rows(1000, [1 / 9, 1 / 3, 1.0], 200) == [200, 333, 1000]
    assert rungs.rung_rows(300, [1 / 9, 1 / 3, 1.0], 200) == [200, 300]
    assert rungs.rung_rows(150, [1 / 9, 1 / 3, 1.0], 200) == [150]


def test_subsamples_are_stratified_nested_and_seeded():
    rng = np.random.default_rng(1)
    y = (rng.random(10_000) < 0.05).astype(int)
    sizes = [1111, 3333, 10_000]
    a = rungs.subsets(y, sizes, seed=7)
    assert a[-1] == slice(None)
    assert set(a[0]) < set(a[1])  # nested: a promoted trial sees the rows it saw, and more
    for idx, m in zip(a[:-1], sizes, strict=False):
        assert len(idx) == m == len(set(idx))
        assert abs(y[idx].mean() - y.mean()) < 0.002  # the class mix of the whole
    b = rungs.subsets(y, sizes, seed=7)
    assert all(np.array_equal(x, z) for x, z in zip(a[:-1], b[:-1], strict=True))
    c = rungs.subsets(y, sizes, seed=8)
    assert not np.array_equal(a[0], c[0])


def test_rungs_keep_rare_classes():
    y = np.r_[np.ones(120, int), np.zeros(59_880, int)]
    cfg = types.SimpleNamespace(rungs=[1 / 9, 1 / 3, 1.0], min_rows=200, min_class_rows=300)
    sizes, idx = rungs.plan(y, cfg, seed=3)
    assert sizes == [6654 + 120, 19_960 + 120, 60_000]
    assert all(y[i].sum() == 120 for i in idx[:-1])  # every positive on every rung
    assert set(idx[0]) < set(idx[1])


def test_promote_keeps_the_best_fraction():
    # The first min_trials go on whatever their value.
    assert rungs.promote(0.1, [0.9, 0.8], "maximize", 3.0, 3)
    # 6 trials at the rung, keep 2: beaten by one -> on; beaten by two -> stop.
    assert rungs.promote(0.85, [0.9, 0.8, 0.7, 0.6, 0.5], "maximize", 3.0, 3)
    assert not rungs.promote(0.75, [0.9, 0.8, 0.7, 0.6, 0.5], "maximize", 3.0, 3)
    # Direction matters (log loss: lower is better).
    assert rungs.promote(0.2, [0.3, 0.4, 0.5, 0.6], "minimize", 3.0, 3)
    assert not rungs.promote(0.55, [0.3, 0.4, 0.5, 0.6], "minimize", 3.0, 3)
    assert not rungs.promote(float("nan"), [0.3, 0.4, 0.5], "maximize", 3.0, 3)


# --------------------------------------------------------------------------------------
# A small search.


def _search(params, data):
    return tune.run_search(storage.new_study(params), params, data, params.tune.n_trials)


@pytest.fixture(scope="module")
def searched():
    params, data = small_params(), small_data()
    return params, data, _search(params, data)


def test_trials_are_promoted_only_on_their_rung_values(searched):
    params, data, study = searched
    fid = params.tune.fidelity
    sizes, _ = rungs.plan(data.y_train, fid, params.seed)
    assert len(sizes) == 3 and sizes[-1] == len(data.y_train)
    trials = study.get_trials()
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.state == TrialState.PRUNED for t in trials)
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == sizes[: len(steps)], "a trial reports rungs in order, at rows"
        records = t.user_attrs[rungs.RUNGS_ATTR]
        assert [r["rows"] for r in records] == steps
        assert [r["value"] for r in records] == [t.intermediate_values[s] for s in steps]
        for k, step in enumerate(steps):
            if k == len(sizes) - 1:
                continue
            # Replay the decision from the trials before it that reached the same rung.
            # Within its family: families meet only on all rows.
            others = [
                o.intermediate_values[step]
                for o in trials[: t.number]
                if step in o.intermediate_values and o.params["family"] == t.params["family"]
            ]
            went_on = rungs.promote(
                t.intermediate_values[step],
                others,
                "maximize",
                fid.reduction_factor,
                fid.min_trials,
            )
            assert went_on == (k + 1 < len(steps)), (t.number, k)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs[rungs.PRUNED_AT_ATTR] == len(steps) - 1
        else:
            assert steps == sizes and t.value == t.intermediate_values[sizes[-1]]


def test_best_trial_refit_on_all_rows_gives_its_value(searched):
    params, data, study = searched
    best = study.best_trial
    assert max(best.intermediate_values) == len(data.y_train)
    spaces = search_space.parse(params.tune)
    family, hp = search_space.plain_params(best.params, spaces)
    hp.update(best.user_attrs.get(rungs.FIT_PARAMS_ATTR, {}))
    if family == "xgboost":
        rounds = best.user_attrs[rungs.RUNGS_ATTR][-1]["best_iteration"] + 1
        assert hp["n_estimators"] == rounds <= 200
    # The train stage's plain fit (no early stopping) on every training row.
    scaled = families.get(family).needs_scaling
    est = families.make_estimator(
        family, hp, y=data.y_train, n_classes=2, class_weight="balanced", seed=params.seed, n_jobs=1
    )
    est.fit(data.x_train[scaled], data.y_train)
    value = objective("average_precision").fn(data.y_valid, est.predict_proba(data.x_valid[scaled]))
    assert value == pytest.approx(best.value, abs=1e-12)


def test_xgboost_rounds_are_an_outcome(searched):
    _, _, study = searched
    xgb = [t for t in study.get_trials() if t.params["family"] == "xgboost"]
    assert xgb
    for t in xgb:
        for r in t.user_attrs[rungs.RUNGS_ATTR]:
            assert 0 <= r["best_iteration"] < 200


def test_same_params_same_trials_with_rungs(searched):
    params, _, study = searched
    again = _search(params, small_data())
    a, b = study.get_trials(), again.get_trials()
    assert [(t.params, t.state, t.value, t.intermediate_values) for t in a] == [
        (t.params, t.state, t.value, t.intermediate_values) for t in b
    ]


def test_run_record_shows_rungs(searched):
    params, _, study = searched
    spaces = search_space.parse(params.tune)
    pruned = next(t for t in study.get_trials() if t.state == TrialState.PRUNED)
    rec = trial_runs.trial_record(
        pruned,
        experiment_id="1",
        parent_run_id="p",
        name="s",
        metric=objective("average_precision"),
        spaces=spaces,
    )
    assert rec.tags["trial_state"] == "PRUNED"
    assert rec.tags["pruned_at_rung"] == str(pruned.user_attrs[rungs.PRUNED_AT_ATTR])
    assert rec.params["rows"] == max(pruned.intermediate_values)
    steps = [(s, v) for k, v, s in rec.step_metrics if k == "intermediate_average_precision"]
    assert steps == sorted(pruned.intermediate_values.items())


def test_resumed_trial_reuses_the_rungs_of_the_trial_that_died():
    """A retried trial takes the rungs its dead predecessor recorded and fits only the rest."""
    params, data = small_params({"tune.n_trials": 1}), small_data()
    study = storage.new_study(params)
    # A trial that died after rung 0 (what a kill mid-rung leaves in the storage).
    dead = study.ask()
    search_space.suggest(dead, search_space.parse(params.tune))
    fid = params.tune.fidelity
    first = rungs.plan(data.y_train, fid, params.seed)[0][0]
    fake = {"rung": 0, "rows": first, "value": 0.5, "seconds": 123.0, "finished_at": 1.0}
    dead.set_user_attr(rungs.RUNGS_ATTR, [fake])
    dead.report(0.5, first)
    study.tell(dead, state=TrialState.FAIL)
    study.enqueue_trial(dict(dead.params), user_attrs={"retry_of": dead.number})
    tune.run_search(study, params, data, 1)
    retry = study.get_trials()[-1]
    assert retry.user_attrs["retry_of"] == dead.number
    assert retry.user_attrs[rungs.REUSED_ATTR] == [0]
    records = retry.user_attrs[rungs.RUNGS_ATTR]
    assert records[0] == fake  # taken, not refit (a refit would not take 123 s)
    assert all(r["seconds"] < 60 for r in records[1:])
    assert retry.intermediate_values[first] == 0.5


def test_fidelity_off_is_the_old_search():
    params = small_params(
        {
            "tune.n_trials": 3,
            "tune.fidelity": {
                "rungs": [1.0],
                "early_stopping_rounds": None,
                "forest_max_rows": None,
            },
        }
    )
    study = _search(params, small_data())
    for t in study.get_trials():
        assert rungs.RUNGS_ATTR not in t.user_attrs


def test_rungs_must_end_with_all_rows():
    with pytest.raises(Exception, match=r"end with 1\.0"):
        small_params({"tune.fidelity.rungs": [0.1, 0.5]})
    with pytest.raises(Exception, match=r"end with 1\.0"):
        small_params({"tune.fidelity.rungs": [0.5, 0.2, 1.0]})


def test_default_study_prunes_on_rungs():
    assert isinstance(storage.new_study(small_params()).pruner, rungs.RungPruner)


@pytest.mark.parametrize("family", ["random_forest", "extra_trees"])
def test_forest_trees_grow_on_at_most_forest_max_rows(family):
    data = small_data(600)
    params = small_params({"tune.fidelity.forest_max_rows": 100})
    x, y = data.x_train[False], data.y_train
    fit = {
        "metric": objective("average_precision"),
        "cfg": params.tune.fidelity,
        "n_classes": 2,
        "class_weight": "none",
        "seed": 0,
        "n_jobs": 1,
    }
    hp = {"n_estimators": 5}
    est, outcome, _ = rungs.fit_rung(family, hp, x, y, data.x_valid[False], data.y_valid, **fit)
    assert outcome == {"max_samples": 100, "bootstrap": True}  # the refit grows the same trees
    assert (est.get_params()["max_samples"], est.get_params()["bootstrap"]) == (100, True)
    # Fewer rows than the cap, or bootstrap turned off by the user: every tree sees all rows.
    _, outcome, _ = rungs.fit_rung(
        family, hp, x[:90], y[:90], data.x_valid[False], data.y_valid, **fit
    )
    assert outcome == {}
    if family == "extra_trees":
        est, outcome, _ = rungs.fit_rung(
            family, {**hp, "bootstrap": False}, x, y, data.x_valid[False], data.y_valid, **fit
        )
        assert outcome == {} and est.get_params()["max_samples"] is None
