"""How the search's cost grows with the data: the multi-fidelity default against the old search.

Side by side in one run, on the same prepared data and trials budget:

- ``old``: the search before issue 17 (``tune.fidelity``: rungs [1.0], no early stopping, no
  rows-per-tree cap; per-family percentile pruning inside each fit; logistic regression,
  random forest and XGBoost with balanced class weights; no start points);
- ``new``: the default (rungs over rows, successive halving, XGBoost early stopping, forests
  capped at ``forest_max_rows`` rows per tree, extra trees, class weights searched, a start
  point per family).

Each search is untracked (in-memory study: the search's own cost); its best trial is then
refit on all training rows the way the train stage does and scored on the test split.
Datasets: the default (params.yaml's) and ``synthetic_fraud`` at the sizes asked.

Time-to-quality against FLAML (``--flaml 60,300``): both get the same wall-clock budget on the
same matrices (ours: ``tune.timeout_s`` with the budget planner, every trial a run only in
the study; FLAML: ``AutoML.fit(time_budget=...)`` with its default learners); the test metric
each reaches is compared, and both best-so-far validation curves are drawn (PNG). FLAML is a
bench-only dependency in its own venv (``/tmp/flaml-venv``, created with pip if missing).

    python bench/search_scaling.py [--sizes 100000,300000,1000000] [--trials 20]
        [--old-max-rows 300000] [--flaml 60,300] [--flaml-rows 100000]
        [--seeds 42,7,1] [--tracked]

Results are appended to bench/results/search_scaling.json as each measurement ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from common import ROOT, bench_params

warnings.filterwarnings("ignore")
logging.disable(logging.INFO)

OUT = ROOT / "bench" / "results"
FLAML_VENV = Path("/tmp/flaml-venv")
FLAML_PIN = "flaml[automl]==2.7.0"
FRAUD = {
    "data.source": "synthetic_fraud",
    "data.target": "Class",
    "data.positive_class": 1,
    "data.sensitive_features": [],
    "data.slice_columns": [],
}
# The search before issue 17: one fit on all rows per trial, the three families of then
# (balanced class weights), no start points.
OLD = {
    "tune.fidelity": {"rungs": [1.0], "early_stopping_rounds": None, "forest_max_rows": None},
    "tune.start_points": {},
    "tune.families": {
        "logistic_regression": {"C": {"low": 0.001, "high": 100.0, "log": True}},
        "random_forest": {
            "n_estimators": {"low": 100, "high": 400, "step": 50},
            "max_depth": {"low": 3, "high": 16},
            "min_samples_leaf": {"low": 1, "high": 20},
            "max_features": {"choices": ["sqrt", 0.5, 1.0]},
        },
        "xgboost": {
            "n_estimators": {"low": 50, "high": 400, "step": 50},
            "max_depth": {"low": 2, "high": 8},
            "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
            "subsample": {"low": 0.6, "high": 1.0},
            "colsample_bytree": {"low": 0.5, "high": 1.0},
            "min_child_weight": {"low": 1.0, "high": 10.0, "log": True},
            "reg_lambda": {"low": 0.001, "high": 10.0, "log": True},
        },
    },
}

FLAML_RUNNER = r"""
import json, sys, time
import numpy as np
from flaml import AutoML
from sklearn.metrics import average_precision_score, roc_auc_score
d = np.load(sys.argv[1]); budget = float(sys.argv[2]); out = sys.argv[3]; log = sys.argv[4]
automl = AutoML()
t0 = time.perf_counter()
automl.fit(d["x_train"], d["y_train"], X_val=d["x_valid"], y_val=d["y_valid"],
           task="classification", metric="ap", time_budget=budget, seed=int(d["seed"]),
           n_jobs=2, log_file_name=log, verbose=0, retrain_full=False)
wall = time.perf_counter() - t0
p = automl.predict_proba(d["x_test"])[:, 1]
curve = []
with open(log) as fh:
    for line in fh:
        r = json.loads(line)
        if "wall_clock_time" in r and "validation_loss" in r:
            curve.append([r["wall_clock_time"], 1 - r["validation_loss"]])
np.save(out + ".proba.npy", p)
json.dump({"wall_s": wall, "test_average_precision": average_precision_score(d["y_test"], p),
           "test_roc_auc": roc_auc_score(d["y_test"], p), "best_learner": automl.best_estimator,
           "best_config": automl.best_config, "best_valid": 1 - automl.best_loss,
           "trials": len(curve), "curve": curve}, open(out, "w"))
"""


def make_project(workdir: Path, overrides: dict):
    from mlplatform.config import Paths
    from mlplatform.data import ingest, prepare

    params = bench_params(workdir, overrides)
    paths = Paths(workdir)
    ingest.run(params, paths)
    prepare.run(params, paths)
    return params, paths


def with_overrides(params, overrides: dict):
    from mlplatform.config import parse_params

    raw = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        node = raw
        *parents, key = dotted.split(".")
        for p in parents:
            node = node[p]
        node[key] = value
    return parse_params(raw)


def refit_and_test(params, paths, family: str, hp: dict) -> dict:
    """Refit like the train stage (all training rows) and score the test split."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from mlplatform.data.dataset import load_schema, load_split
    from mlplatform.modeling import families, train
    from mlplatform.modeling.features import design_matrices

    schema = load_schema(paths)
    tr, va, te = (load_split(paths, s) for s in ("train", "validation", "test"))
    t0 = time.perf_counter()
    fitted = train.fit(params, schema, tr, va, family, hp)
    refit_s = time.perf_counter() - t0
    scale = families.get(family).needs_scaling
    ((_, _, x_test),) = design_matrices(schema.features, params.features, tr, te, [scale]).values()
    y_test = schema.encode_target(te[schema.target]).to_numpy()
    p = fitted.estimator.predict_proba(x_test)[:, 1]
    return {
        "refit_s": refit_s,
        "test_average_precision": float(average_precision_score(y_test, p)),
        "test_roc_auc": float(roc_auc_score(y_test, p)),
        "test_positives": int(y_test.sum()),
        "_test": (y_test, p),  # for the paired bootstrap; not saved
    }


def paired_delta_ci(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, seed: int) -> dict:
    """Test AP of new minus old with a 95% paired bootstrap interval (the same resampled
    test rows score both models): how small a difference the test split can resolve."""
    from scipy.stats import bootstrap
    from sklearn.metrics import average_precision_score

    def delta(yy, a, b):
        return average_precision_score(yy, a) - average_precision_score(yy, b)

    res = bootstrap(
        (y, p_new, p_old),
        delta,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        method="percentile",
        random_state=seed,
    )
    lo, hi = res.confidence_interval
    return {"delta": float(delta(y, p_new, p_old)), "ci95": [float(lo), float(hi)]}


def search(params, paths, data, n_trials: int) -> dict:
    """One untracked search; returns its wall time, best trial, curve and test metrics."""
    from mlplatform.search import tune
    from mlplatform.search.storage import new_study

    study = new_study(params)
    t0 = time.perf_counter()
    wall0 = time.time()
    tune.run_search(study, params, data, n_trials)
    return summarize(study, params, paths, time.perf_counter() - t0, wall0)


def search_tracked(params, paths) -> dict:
    """The tune stage itself (``tune.run``: every trial a child run in the MLflow store, the
    parent run's plots and summary) on a fresh study; ``search_s`` is the search part, and
    ``stage_s`` all of it (loading the matrices, the store's setup, the end of the study)."""
    import shutil

    import optuna

    from mlplatform.search import tune
    from mlplatform.search.storage import make_storage

    shutil.rmtree(paths.state, ignore_errors=True)
    t0 = time.perf_counter()
    wall0 = time.time()
    summary = tune.run(params, paths)
    stage = time.perf_counter() - t0
    study = optuna.load_study(study_name=summary["study_name"], storage=make_storage(paths))
    out = summarize(study, params, paths, summary["timings"]["search_s"], wall0)
    out.update(stage_s=stage, tracked=True)
    return out


def summarize(study, params, paths, wall: float, wall0: float) -> dict:
    """A finished search's wall time, best trial, best-so-far curve and test metrics."""
    import optuna
    from optuna.trial import TrialState

    from mlplatform.search import rungs
    from mlplatform.search import space as search_space

    spaces = search_space.parse(params.tune)
    states = [t.state for t in study.trials]
    if TrialState.COMPLETE not in states:  # a budget too small for a single trial
        return {
            "search_s": wall,
            "trials": len(states),
            "complete": 0,
            "curve": [],
            "test_average_precision": float("nan"),
            "best_family": None,
        }
    best = study.best_trial
    family, hp = search_space.plain_params(best.params, spaces)
    hp.update(best.user_attrs.get(rungs.FIT_PARAMS_ATTR, {}))
    curve, best_so_far = [], None
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            if best_so_far is None or t.value > best_so_far:
                best_so_far = t.value
            curve.append([t.datetime_complete.timestamp() - wall0, best_so_far])
    return {
        "search_s": wall,
        "trials": len(study.trials),
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_family": family,
        "best_params": hp,
        "best_valid": float(best.value),
        "curve": curve,
        **refit_and_test(params, paths, family, hp),
    }


def class_weight_pairs(params, paths) -> list[dict]:
    """Each tree family's start point refit with balanced and with no class weights, both
    scored on the test split: what searching ``class_weight`` can buy for a ranking metric."""
    out = []
    for family, start in params.tune.start_points.items():
        if family == "logistic_regression" or family not in params.tune.families:
            continue
        fits = {
            cw: refit_and_test(params, paths, family, {**start, "class_weight": cw})
            for cw in ("balanced", "none")
        }
        y, p_balanced = fits["balanced"]["_test"]
        out.append(
            {
                "family": family,
                **{f"test_ap_{cw}": f["test_average_precision"] for cw, f in fits.items()},
                **{f"refit_s_{cw}": f["refit_s"] for cw, f in fits.items()},
                "none_minus_balanced": paired_delta_ci(y, fits["none"]["_test"][1], p_balanced, 0),
            }
        )
        print(
            f"{family}: " + ", ".join(f"{k} {v}" for k, v in out[-1].items() if k != "family"),
            file=sys.stderr,
        )
    return out


def save(results: dict, name: str = "search_scaling.json") -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(results, indent=1) + "\n")


def flaml_python() -> Path:
    py = FLAML_VENV / "bin" / "python"
    if not py.exists() or subprocess.run([py, "-c", "import flaml.automl"]).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(FLAML_VENV)], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", FLAML_PIN, "pandas"], check=True)
    return py


def run_flaml(params, paths, data, budget: float, tmp: Path) -> dict:
    from mlplatform.data.dataset import load_schema, load_split
    from mlplatform.modeling.features import design_matrices

    schema = load_schema(paths)
    tr, te = load_split(paths, "train"), load_split(paths, "test")
    ((_, _, x_test),) = design_matrices(schema.features, params.features, tr, te, [False]).values()
    npz = tmp / "flaml.npz"
    np.savez(
        npz,
        x_train=data.x_train[False],
        y_train=data.y_train,
        x_valid=data.x_valid[False],
        y_valid=data.y_valid,
        x_test=x_test,
        y_test=schema.encode_target(te[schema.target]).to_numpy(),
        seed=params.seed,
    )
    runner = tmp / "flaml_runner.py"
    runner.write_text(FLAML_RUNNER)
    out = tmp / "flaml.json"
    subprocess.run(
        [str(flaml_python()), str(runner), str(npz), str(budget), str(out), str(tmp / "f.log")],
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    result = json.loads(out.read_text())
    result["_proba"] = np.load(str(out) + ".proba.npy")
    return result


def plot_curves(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results.get("flaml", [])
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=True):
        for name, key in (("mlplatform (rungs)", "ours"), ("FLAML", "flaml")):
            c = np.asarray(r[key]["curve"] or [[0, np.nan]])
            ax.step(
                c[:, 0],
                c[:, 1],
                where="post",
                label=f"{name}: test AP {r[key]['test_average_precision']:.4f}",
            )
        ax.set_xlabel("wall-clock seconds")
        ax.set_ylabel("best validation average precision so far")
        ax.set_title(f"{r['dataset']}, budget {r['budget_s']:.0f} s")
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = ROOT / "docs" / "images" / "search_time_to_quality.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def flaml_pair(params, paths, data, budget: float, args, tmp: str) -> dict:
    """Ours and FLAML on the same matrices with the same wall-clock budget."""
    p = with_overrides(params, {"tune.timeout_s": budget})
    ours = search_tracked(p, paths) if args.tracked else search(p, paths, data, 10_000)
    theirs = run_flaml(params, paths, data, budget, Path(tmp))
    entry = {
        "dataset": f"synthetic_fraud {args.flaml_rows:,} rows"
        if args.flaml_rows
        else params.data.source,
        "seed": params.seed,
        "budget_s": budget,
        "ours": ours,
        "flaml": theirs,
    }
    if "_test" in ours:  # ours minus FLAML on the same resampled test rows
        y, p_ours = ours["_test"]
        entry["test_ap_delta_ci"] = paired_delta_ci(y, p_ours, theirs["_proba"], 0)
    ours.pop("_test", None)
    theirs.pop("_proba", None)
    ci = entry.get("test_ap_delta_ci", {"delta": float("nan"), "ci95": [0, 0]})
    print(
        f"seed {params.seed}, budget {budget:.0f} s: ours{' (tracked)' if args.tracked else ''} "
        f"test AP "
        f"{ours['test_average_precision']:.4f} ({ours['search_s']:.1f} s, {ours['trials']} "
        f"trials, best {ours['best_family']} valid {ours.get('best_valid', float('nan')):.4f}); "
        f"FLAML {theirs['test_average_precision']:.4f} ({theirs['wall_s']:.1f} s, best "
        f"{theirs['best_learner']} valid {theirs['best_valid']:.4f}); ours - FLAML "
        f"{ci['delta']:+.4f} (95% paired bootstrap {ci['ci95'][0]:+.4f} to {ci['ci95'][1]:+.4f})",
        file=sys.stderr,
    )
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--old-max-rows", type=int, default=300_000, help="skip old search above")
    ap.add_argument("--skip-default-data", action="store_true")
    ap.add_argument("--flaml", default="", help="budgets in seconds, e.g. 60,300")
    ap.add_argument("--flaml-rows", type=int, default=100_000, help="0: the default data")
    ap.add_argument(
        "--tracked",
        action="store_true",
        help="FLAML mode: ours is the tune stage itself, every trial an MLflow run "
        "(default: an untracked search)",
    )
    ap.add_argument(
        "--seeds",
        default="",
        help="FLAML mode: params seeds, e.g. 42,7,1 (each a new data split, search and FLAML "
        "seed; the mean difference over seeds is printed); default: params.yaml's",
    )
    ap.add_argument("--variants", default="new,old")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument(
        "--class-weights",
        default="",
        help="sizes (0: the default data), e.g. 0,100000: start points, balanced against none",
    )
    args = ap.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLPLATFORM_OPTUNA_STORAGE", None)
    from mlplatform.search import space as search_space
    from mlplatform.search import tune

    path = OUT / "search_scaling.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    flaml_path = OUT / "search_flaml.json"
    if args.plot_only:
        plot_curves(json.loads(flaml_path.read_text()))
        return 0
    if args.class_weights:
        weights = {}
        for rows in (int(r) for r in args.class_weights.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                params, paths = make_project(
                    Path(tmp), {**FRAUD, "data.rows": rows} if rows else {}
                )
                label = params.data.source + (f" {rows:,} rows" if rows else "")
                print(label, file=sys.stderr)
                weights[label] = class_weight_pairs(params, paths)
        save(weights, "search_class_weights.json")
        return 0
    results.setdefault("scaling", [])
    results["machine"] = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"
    print(f"machine: {results['machine']}", file=sys.stderr)
    datasets = [] if args.skip_default_data else [(None, None)]
    datasets += [("synthetic_fraud", int(s)) for s in args.sizes.split(",") if s]
    for source, rows in datasets:
        with tempfile.TemporaryDirectory() as tmp:
            over = {"tune.n_trials": args.trials}
            if source:
                over.update({**FRAUD, "data.rows": rows})
            params, paths = make_project(Path(tmp), over)
            label = f"{params.data.source}" + (f" {rows:,} rows" if rows else "")
            data = tune.load_search_data(params, paths, list(search_space.parse(params.tune)))
            entry = {"dataset": label, "rows": rows, "train_rows": len(data.y_train)}
            asked = args.variants.split(",")
            variants = [v for v in ("new", "old") if v in asked]
            if (rows or 0) > args.old_max_rows and "old" in variants:
                variants.remove("old")
            for name in variants:
                p = with_overrides(params, OLD) if name == "old" else params
                entry[name] = search(p, paths, data, args.trials)
                print(
                    f"{label} {name}: {entry[name]['search_s']:.1f} s, test AP "
                    f"{entry[name]['test_average_precision']:.4f}",
                    file=sys.stderr,
                )
            previous = {e["dataset"]: e for e in results["scaling"]}.get(label, {})
            for name in ("new", "old"):
                if name not in entry and name in previous:  # kept from an earlier run
                    entry[name] = {**previous[name], "earlier_run": True}
            if all("_test" in entry.get(n, {}) for n in ("new", "old")):
                y, p_old = entry["old"]["_test"]
                entry["test_ap_delta_ci"] = paired_delta_ci(y, entry["new"]["_test"][1], p_old, 0)
            for name in ("new", "old"):
                entry.get(name, {}).pop("_test", None)
            if "old" in entry:
                entry["time_ratio_new_vs_old"] = entry["new"]["search_s"] / entry["old"]["search_s"]
                entry["test_ap_delta"] = (
                    entry["new"]["test_average_precision"] - entry["old"]["test_average_precision"]
                )
            results["scaling"] = [e for e in results["scaling"] if e["dataset"] != label]
            results["scaling"].append(entry)
            save(results)
    budgets = [float(b) for b in args.flaml.split(",") if b]
    seeds = [int(x) for x in args.seeds.split(",") if x] or [None]
    if budgets:
        versus: dict = {"machine": results["machine"], "flaml": []}
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                over = {"tune.n_trials": 10_000}
                if seed is not None:
                    over["seed"] = seed
                if args.flaml_rows:
                    over.update({**FRAUD, "data.rows": args.flaml_rows})
                params, paths = make_project(Path(tmp), over)
                data = tune.load_search_data(params, paths, list(search_space.parse(params.tune)))
                for budget in budgets:
                    versus["flaml"].append(flaml_pair(params, paths, data, budget, args, tmp))
                    save(versus, "search_flaml.json")
        for budget in budgets:
            deltas = [
                e["test_ap_delta_ci"]["delta"]
                for e in versus["flaml"]
                if e["budget_s"] == budget and "test_ap_delta_ci" in e
            ]
            if len(deltas) > 1:
                print(
                    f"budget {budget:.0f} s, {len(deltas)} seeds: mean ours - FLAML "
                    f"{np.mean(deltas):+.4f} (each: {', '.join(f'{d:+.4f}' for d in deltas)})",
                    file=sys.stderr,
                )
        if seeds == [None]:
            plot_curves(versus)
    for e in results["scaling"]:
        line = f"{e['dataset']}: new {e['new']['search_s']:.1f} s"
        if "old" in e:
            line += (
                f", old {e['old']['search_s']:.1f} s, ratio {e['time_ratio_new_vs_old']:.2f}, "
                f"test AP delta {e['test_ap_delta']:+.4f}"
            )
        if "test_ap_delta_ci" in e:
            lo, hi = e["test_ap_delta_ci"]["ci95"]
            line += f" (95% paired bootstrap {lo:+.4f} to {hi:+.4f})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
