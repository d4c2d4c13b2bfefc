"""Parallel search: trials per minute with 1 and 2 workers of one thread each, side by side.

The same study config (default dataset HMDA, one XGBoost family with a fixed number of
trees so trials cost about the same, pruning and rungs off, ``tune.n_jobs: 1``), each run on a fresh
copy of one prepared project (fresh journal storage, fresh sqlite MLflow store):

- single: today's search (``tune.run``, no ``--workers``): one process, one thread;
- 1 worker: the parallel path (``workers.run_parallel``) with one worker process;
- 2 workers: the same with two worker processes, ``search_workers.threads: 1``.

Both parallel variants share Optuna's journal file with its lock (the local storage of
``--workers``). Rounds are interleaved (shuffled order per round); round r uses seed 42 + r
for every variant. Throughput is trials / (first trial start -> last trial end) from the
Optuna storage: the search itself, without process start-up and data loading (the wall time
of each call is reported apart). Scaling efficiency = (2-worker rate / 1-worker rate) / 2,
against both baselines. Best values: the mean best per variant; "noise" is the spread of
the single search's best across seeds. CPU seconds per trial (this process and every
finished descendant, start-up included) do not depend on how loaded the machine is.

    python bench/search_workers.py [--rounds 3] [--trials 24]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from common import ROOT

warnings.filterwarnings("ignore")
logging.disable(logging.INFO)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BIN = Path(sys.executable).parent
CLI = BIN / "mlplatform"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPLATFORM_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra or {})
    return env


def _cli(project: Path, *args: str, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(CLI), *args], cwd=project, env=_env(env), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"mlplatform {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def make_project(folder: Path, trials: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tune"].update(
        n_trials=trials,
        n_jobs=1,
        timeout_s=3600,
        pruner={"enabled": False},
        # Trials of equal cost: one fit on all rows, a fixed number of trees (no rungs).
        fidelity={"rungs": [1.0], "early_stopping_rounds": None, "forest_max_rows": None},
        families={
            "xgboost": {
                "n_estimators": 400,
                "max_depth": {"low": 4, "high": 8},
                "learning_rate": {"low": 0.02, "high": 0.3, "log": True},
                "subsample": {"low": 0.6, "high": 1.0},
                "colsample_bytree": {"low": 0.5, "high": 1.0},
            }
        },
    )
    raw["search_workers"] = {"threads": 1}
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    _cli(folder, "ingest")
    _cli(folder, "prepare")
    return folder


def _trials(project: Path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    store = JournalStorage(JournalFileBackend(str(project / ".mlplatform/optuna.journal")))
    (summary,) = optuna.get_all_study_summaries(store)
    return optuna.load_study(study_name=summary.study_name, storage=store).trials


def _cpu() -> float:
    """CPU seconds of this process and of every finished descendant (workers, helpers)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_variant(base: Path, work: Path, variant: str, seed: int) -> dict:
    """One fresh copy of the project, one search; the coordinator runs in this process."""
    from mlplatform.config import Paths, load_params
    from mlplatform.search import tune, workers

    project = work / f"{variant.replace(' ', '-')}-{seed}"
    skip = shutil.ignore_patterns("mlflow.db", "mlruns", ".mlplatform")
    shutil.copytree(base, project, ignore=skip)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["seed"] = seed
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"  # one store per copy
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    here = os.getcwd()
    os.chdir(project)
    try:
        params, paths = load_params(Path("params.yaml")), Paths(".")
        t0, cpu0 = time.perf_counter(), _cpu()
        if variant == "single":
            report = tune.run(params, paths)
        else:
            report = workers.run_parallel(params, paths, int(variant.split()[0]))
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        trials = [t for t in _trials(project) if t.state.name == "COMPLETE"]
    finally:
        os.chdir(here)
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    shutil.rmtree(project, ignore_errors=True)
    return {
        "variant": variant,
        "seed": seed,
        "trials": len(trials),
        "span_s": span,
        "per_min": 60 * len(trials) / span,
        "wall_s": wall,
        "cpu_per_trial": cpu / len(trials),
        "best": report["best"]["value"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=24)
    args = ap.parse_args()
    variants = ["single", "1 worker", "2 workers"]
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        base = make_project(work / "base", args.trials)
        results = []
        rng = random.Random(0)
        for r in range(args.rounds):
            order = variants[:]
            rng.shuffle(order)
            for variant in order:
                res = run_variant(base, work, variant, 42 + r)
                results.append(res)
                print(
                    f"round {r} {variant:>9}: {res['trials']} trials in {res['span_s']:.1f} s "
                    f"({res['per_min']:.1f}/min; wall {res['wall_s']:.1f} s), "
                    f"best {res['best']:.4f}",
                    flush=True,
                )
    load = os.getloadavg()
    by = {v: [r for r in results if r["variant"] == v] for v in variants}
    rate = {v: statistics.median(r["per_min"] for r in rs) for v, rs in by.items()}
    wall = {v: statistics.median(r["wall_s"] for r in rs) for v, rs in by.items()}
    best = {v: statistics.mean(r["best"] for r in rs) for v, rs in by.items()}
    cpu = {v: statistics.median(r["cpu_per_trial"] for r in rs) for v, rs in by.items()}
    single_bests = [r["best"] for r in by["single"]]
    noise = max(single_bests) - min(single_bests)
    print(f"\ncores {len(os.sched_getaffinity(0))}, load average at the end {load[0]:.2f}")
    print("| variant | trials/min (median) | CPU s per trial | wall s (median) | mean best AP |")
    print("| --- | --- | --- | --- | --- |")
    for v in variants:
        print(f"| {v} | {rate[v]:.1f} | {cpu[v]:.2f} | {wall[v]:.1f} | {best[v]:.4f} |")
    for baseline in ("single", "1 worker"):
        eff = rate["2 workers"] / rate[baseline] / 2
        print(f"scaling efficiency, 2 workers vs {baseline}: {eff:.2f} (target >= 0.85)")
    print(
        f"best: 2 workers - single = {best['2 workers'] - best['single']:+.4f}; "
        f"noise (spread of the single search's best over {len(single_bests)} seeds) {noise:.4f}"
    )


if __name__ == "__main__":
    main()
