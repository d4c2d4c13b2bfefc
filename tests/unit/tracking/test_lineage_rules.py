"""Lineage's pure parts: params differences, doubtful lineage, the report's warnings."""

from __future__ import annotations

from mlplatform.registry import lineage


def info(**over):
    base = {
        "model_name": "m",
        "version": "2",
        "aliases": ["champion"],
        "run_id": "r",
        "source": "s",
        "git": {"commit": "abc", "dirty": False},
        "data": {
            "source": "hmda",
            "dvc_lock": {"data/prepared": "x.dir"},
            "matches_dvc_lock": {"data/prepared": True},
            "files": {"train": "1"},
        },
        "stages": {"prepare": "d"},
        "params": {"hash": "h", "hash_now": "h", "recorded": True, "differs_from_current": []},
        "search": {"parent_run_id": "p", "study": "s", "best_trial": "3", "trials": {}},
        "test_metrics": {"roc_auc": 0.8},
        "card": {"run_artifacts": "a/", "versioned": "model_card/model_card_v2.md"},
        "gates": [],
        "events": [],
    }
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def test_params_diff_names_changed_added_and_removed_keys():
    then = {"seed": 1, "tune": {"n_trials": 5, "metric": "roc_auc"}, "old": True}
    now = {"seed": 2, "tune": {"n_trials": 5, "metric": "roc_auc"}, "new": [1]}
    assert lineage.params_diff(then, now) == [
        {"key": "new", "then": None, "now": [1]},
        {"key": "old", "then": True, "now": None},
        {"key": "seed", "then": 1, "now": 2},
    ]


def test_clean_lineage_has_no_problems():
    assert lineage.problems(info()) == []
    assert not any(warn for _, warn in lineage.render(info()))


def test_dirty_tree_and_data_not_in_dvc_lock_are_problems_shown_as_warnings():
    bad = info(
        git={"dirty": True},
        data={"matches_dvc_lock": {"data/prepared": False}},
        params={"differs_from_current": [{"key": "seed", "then": 1, "now": 2}]},
    )
    found = lineage.problems(bad)
    assert any("dirty tree" in p for p in found)
    assert any("differs from what dvc.lock records" in p for p in found)
    warnings = [line for line, warn in lineage.render(bad) if warn]
    assert any("dirty" in w for w in warnings)
    assert any("seed" in w for w in warnings)


def test_unknown_data_check_is_a_problem():
    assert lineage.problems(info(data={"matches_dvc_lock": {}})) == [
        "no record of whether its data matched dvc.lock"
    ]
