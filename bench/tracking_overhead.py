"""Tracking overhead of the search, measured side by side in one run.

Three ways to run the same study (same data, seed, sampler, pruner, objective, trials):

- untracked: in-memory Optuna storage, no MLflow at all (the floor);
- ours: ``mlplatform tune`` as the pipeline runs it (journal-file study that can resume,
  parent + child MLflow runs written in batches by a background thread, plots at the end);
- callback: the common pattern it replaces, an RDB sqlite study with
  ``optuna_integration.MLflowCallback`` (deprecated) logging each trial synchronously.

Each repetition runs every variant back to back, in a shuffled (seeded) order, and the
headline is the median of the paired per-repetition ratios (ours / untracked of the same
repetition) with their spread: a machine whose speed drifts between repetitions (other
work on it) moves both sides of a pair alike, where a median of medians would hide it.
The MLflow store already exists (as on every run after the first); creating a fresh one is
timed separately. Fixed cost (setup + end-of-study work) and per-trial cost are reported
apart.

    python bench/tracking_overhead.py [--repeats 3] [--trials N] [--source hmda]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import ROOT, bench_params

warnings.filterwarnings("ignore")
logging.disable(logging.INFO)


def make_project(workdir: Path, overrides: dict) -> tuple:
    from mlplatform.config import Paths
    from mlplatform.data import ingest, prepare

    params = bench_params(workdir, overrides)
    paths = Paths(workdir)
    ingest.run(params, paths)
    prepare.run(params, paths)
    return params, paths


def run_untracked(params, paths) -> dict:
    from mlplatform.search import space as search_space
    from mlplatform.search import tune
    from mlplatform.search.storage import new_study

    t0 = time.perf_counter()
    data = tune.load_search_data(params, paths, list(search_space.parse(params.tune)))
    t1 = time.perf_counter()
    study = new_study(params)
    tune.run_search(study, params, data, params.tune.n_trials)
    t2 = time.perf_counter()
    return {
        "total_s": t2 - t0,
        "load_s": t1 - t0,
        "search_s": t2 - t1,
        "values": [t.value for t in study.trials],
    }


def run_ours(params, paths) -> dict:
    from mlplatform.search import tune
    from mlplatform.search.storage import make_storage

    shutil.rmtree(paths.state, ignore_errors=True)  # a fresh study each repetition
    t0 = time.perf_counter()
    summary = tune.run(params, paths)
    total = time.perf_counter() - t0
    import optuna

    study = optuna.load_study(study_name=summary["study_name"], storage=make_storage(paths))
    timings = summary["timings"]
    return {"total_s": total, **timings, "values": [t.value for t in study.trials]}


def run_callback(params, paths, experiment_id: str, uri: str) -> dict:
    import mlflow
    import optuna
    from optuna_integration import MLflowCallback

    from mlplatform.evaluation.metrics import objective
    from mlplatform.search import pruning, tune
    from mlplatform.search import space as search_space

    db = paths.root / "optuna-callback.db"
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    data = tune.load_search_data(params, paths, list(search_space.parse(params.tune)))
    metric = objective(params.tune.metric)
    study = optuna.create_study(
        storage=f"sqlite:///{db}",
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=pruning.make_pruner(params),
        direction=metric.direction,
    )
    search_space.enqueue_start_points(study, params.tune)  # the same first trials as ours
    callback = MLflowCallback(
        tracking_uri=uri,
        metric_name=f"valid_{metric.name}",
        create_experiment=False,
        mlflow_kwargs={"nested": True, "experiment_id": experiment_id},
    )
    spaces = search_space.parse(params.tune)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="callback-pattern"):
        study.optimize(
            tune.make_objective(params, data, spaces, metric),
            n_trials=params.tune.n_trials,
            callbacks=[callback],
            catch=(Exception,),
        )
    total = time.perf_counter() - t0
    return {"total_s": total, "values": [t.value for t in study.trials]}


def fresh_store_seconds(workdir: Path, params) -> float:
    from mlplatform import tracking

    db = workdir / "fresh.db"
    db.unlink(missing_ok=True)
    fresh = params.model_copy(
        update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{db}"})}
    )
    t0 = time.perf_counter()
    tracking.setup(fresh)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=None, help="default: tune.n_trials")
    ap.add_argument("--source", default=None, help="dataset (default: params.yaml's)")
    ap.add_argument("--skip-callback", action="store_true")
    args = ap.parse_args()

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLPLATFORM_OPTUNA_STORAGE", None)
    overrides = {}
    if args.trials:
        overrides["tune.n_trials"] = args.trials
    if args.source:
        overrides["data.source"] = args.source
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        params, paths = make_project(workdir, overrides)
        from mlplatform import tracking

        fresh_s = fresh_store_seconds(workdir, params)
        _, exp_id = tracking.setup(params)  # the store exists from here on
        uri = params.mlflow.tracking_uri
        # Warm-up (imports, caches) outside the measurements.
        warm = params.model_copy(update={"tune": params.tune.model_copy(update={"n_trials": 2})})
        run_untracked(warm, paths)

        results: dict[str, list[dict]] = {"untracked": [], "ours": [], "callback": []}
        order = ["untracked", "ours", "callback"]
        if args.skip_callback:
            order.remove("callback")
        shuffler = random.Random(params.seed)
        for rep in range(args.repeats):
            # Shuffled so no variant always runs first or last; all of them in each repetition.
            for name in shuffler.sample(order, len(order)):
                if name == "untracked":
                    results[name].append(run_untracked(params, paths))
                elif name == "ours":
                    results[name].append(run_ours(params, paths))
                else:
                    results[name].append(run_callback(params, paths, exp_id, uri))
                print(
                    f"  rep {rep + 1} {name:9s} {results[name][-1]['total_s']:.2f} s",
                    file=sys.stderr,
                )

    med = {k: statistics.median(r["total_s"] for r in v) for k, v in results.items() if v}
    ours = results["ours"]
    paired = {
        k: [r["total_s"] / b["total_s"] for r, b in zip(v, results["untracked"], strict=True)]
        for k, v in results.items()
        if v and k != "untracked"
    }

    def spread(ratios: list[float]) -> dict:
        return {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "per_repetition": [round(x, 4) for x in ratios],
        }

    n = params.tune.n_trials
    setup = statistics.median(r["setup_s"] for r in ours)
    finish = statistics.median(r["finish_s"] + r["drain_s"] for r in ours)
    search_ours = statistics.median(r["search_s"] for r in ours)
    search_base = statistics.median(r["search_s"] for r in results["untracked"])
    per_trial_ms = (search_ours - search_base) / n * 1000
    same = all(r["values"] == results["untracked"][0]["values"] for r in ours)
    report = {
        "dataset": params.data.source,
        "trials": n,
        "repeats": args.repeats,
        "median_total_s": med,
        "paired_ratio_ours_vs_untracked": spread(paired["ours"]),
        "paired_ratio_callback_vs_untracked": spread(paired["callback"])
        if "callback" in paired
        else None,
        "ratio_of_medians_ours_vs_untracked": med["ours"] / med["untracked"],
        "ratio_search_only": search_ours / search_base,
        "fixed_cost_s": {
            "fresh_store": fresh_s,
            "setup_existing_store": setup,
            "end_of_study": finish,
        },
        "per_trial_overhead_ms": per_trial_ms,
        "writer_busy_s": statistics.median(r["writer_busy_s"] for r in ours),
        "same_trials_as_untracked": same,
    }
    print(json.dumps(report, indent=2))
    po = report["paired_ratio_ours_vs_untracked"]
    pc = report["paired_ratio_callback_vs_untracked"]
    print(
        f"\nours / untracked = {po['median']:.3f}x median of paired ratios "
        f"(min {po['min']:.3f}, max {po['max']:.3f}, n={len(po['per_repetition'])}; "
        f"search only {report['ratio_search_only']:.3f}x); "
        + (f"MLflowCallback+RDB / untracked = {pc['median']:.2f}x; " if pc else "")
        + f"fixed: setup {setup:.2f} s + end {finish:.2f} s (fresh store {fresh_s:.2f} s); "
        f"per trial {per_trial_ms:+.1f} ms"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracking_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
