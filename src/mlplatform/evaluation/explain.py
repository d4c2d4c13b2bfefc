"""Explain: SHAP values for the trained pipeline, in terms of the columns a person knows.

- The fast exact explainer for each family (tree explainer for XGBoost and random forests,
  linear for logistic regression), with a model-agnostic permutation explainer as fallback.
- Contributions of encoded sub-features (one-hot columns, missing-value indicators) are
  summed back to their source column, so each row's values plus the base value still add up
  to the model's raw output (log-odds for XGBoost and logistic regression, probability for
  random forests).
- A stratified sample of the test set (``explain.sample_size``) is explained, shrunk if a
  first batch shows the whole would not fit ``explain.time_budget_s``.

Writes reports/explain/ (plots, shap_values.parquet, summary.json) and logs it onto the
training run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import model_format
from mlplatform.config import ExplainConfig, Params, Paths
from mlplatform.data.columns import coerce
from mlplatform.data.dataset import DatasetSchema, load_schema, load_split
from mlplatform.io import atomic_dir, read_json, write_json
from mlplatform.modeling import families
from mlplatform.modeling.features import source_columns

log = logging.getLogger(__name__)

# What permutation SHAP values add up to (the model-agnostic fallback).
PERMUTATION_OUTPUT = "probability"


@dataclass
class Explanation:
    """Aggregated SHAP values: rows x source columns x model outputs."""

    values: np.ndarray  # (n, n_columns, n_outputs)
    base: np.ndarray  # (n_outputs,)
    output: np.ndarray  # (n, n_outputs): the model output the values add up to
    columns: list[str]
    outputs: list[str]  # class names explained (binary: the positive class only)
    method: str
    space: str


def stratified_sample(frame: pd.DataFrame, target: str, n: int, seed: int) -> pd.DataFrame:
    """Up to n rows keeping the class balance (every class keeps at least one row)."""
    if len(frame) <= n:
        return frame
    from sklearn.model_selection import train_test_split

    try:
        sample, _ = train_test_split(
            frame, train_size=n, random_state=seed, stratify=frame[target].astype(str)
        )
    except ValueError:  # a class too rare to stratify
        sample = frame.sample(n=n, random_state=seed)
    return sample.sort_index()


def aggregate(values: np.ndarray, sources: list[str]) -> tuple[np.ndarray, list[str]]:
    """Sum SHAP values of encoded columns that share a source column.

    Args:
        values: (n, n_encoded, n_outputs).
        sources: source column of each encoded column.

    Returns:
        (n, n_sources, n_outputs) and the source columns in first-seen order.
    """
    order = list(dict.fromkeys(sources))
    index = {c: i for i, c in enumerate(order)}
    out = np.zeros((values.shape[0], len(order), values.shape[2]))
    for j, src in enumerate(sources):
        out[:, index[src], :] += values[:, j, :]
    return out, order


def _outputs(model: model_format.TabularModel) -> tuple[list[int], list[str]]:
    classes = [str(c) for c in model.classes]
    if len(classes) == 2:
        return [1], [classes[1]]
    return list(range(len(classes))), classes


def _as_3d(values: Any, keep: list[int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2:  # one output (binary log-odds)
        return arr[:, :, None]
    return arr[:, :, keep]


def _base(expected: Any, keep: list[int]) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(expected, dtype=np.float64))
    return arr if arr.size == 1 else arr[keep]


def raw_output(model: model_format.TabularModel, x: np.ndarray, method: str) -> np.ndarray:
    """The quantity SHAP values add up to, per row and explained output."""
    keep, _ = _outputs(model)
    if output_space(model, method) == "probability":
        return model.predict_matrix(x)[:, keep].astype(np.float64)
    if model.booster is not None:
        import xgboost as xgb

        margin = model.booster.predict(xgb.DMatrix(x), output_margin=True)
        margin = np.asarray(margin, dtype=np.float64)
        return margin[:, None] if margin.ndim == 1 else margin[:, keep]
    dec = np.asarray(model.estimator.decision_function(x), dtype=np.float64)
    return dec[:, None] if dec.ndim == 1 else dec[:, keep]


def output_space(model: model_format.TabularModel, method: str) -> str:
    """What the SHAP values of this model add up to with this explainer."""
    if method == "permutation":
        return PERMUTATION_OUTPUT
    return families.get(model.family).shap_output


def make_explainer(model: model_format.TabularModel, background: np.ndarray, method: str):
    """(callable rows -> (values, expected), method actually used)."""
    import shap

    exact = families.get(model.family).explainer
    if method == "auto":
        method = exact
    if method == exact == "tree":
        tree = model.booster if model.booster is not None else model.estimator
        explainer = shap.TreeExplainer(tree)
        return (lambda x: (explainer.shap_values(x), explainer.expected_value)), "tree"
    if method == exact == "linear":
        explainer = shap.LinearExplainer(model.estimator, shap.maskers.Independent(background))
        return (lambda x: (explainer.shap_values(x), explainer.expected_value)), "linear"
    keep, _ = _outputs(model)
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.PermutationExplainer(
        lambda x: model.predict_matrix(x)[:, keep], masker, seed=0
    )

    def run(x: np.ndarray):
        result = explainer(x, max_evals=2 * x.shape[1] + 1, silent=True)
        base = np.atleast_1d(result.base_values[0]) if len(result) else np.zeros(len(keep))
        return result.values, base

    return run, "permutation"


def explain(
    model: model_format.TabularModel,
    sample: pd.DataFrame,
    background: pd.DataFrame,
    cfg: ExplainConfig,
    method: str = "auto",
) -> Explanation:
    """SHAP values of the sample, aggregated to source columns, within the time budget."""
    x, _ = model.transform(sample)
    bg, _ = model.transform(background)
    keep, outputs = _outputs(model)
    fn, used = make_explainer(model, bg, method)
    budget_end = time.perf_counter() + cfg.time_budget_s
    first = min(len(x), 50)
    t0 = time.perf_counter()
    vals, expected = fn(x[:first])
    per_row = (time.perf_counter() - t0) / max(first, 1)
    chunks = [_as_3d(vals, keep)]
    n_total = first
    if len(x) > first:
        remaining = max(budget_end - time.perf_counter(), 0.0)
        affordable = int(remaining / max(per_row, 1e-6) * 0.8)
        n_total = first + min(len(x) - first, affordable)
        if n_total < len(x):
            log.warning(
                "explaining %d of %d sampled rows to stay within explain.time_budget_s=%g",
                n_total,
                len(x),
                cfg.time_budget_s,
            )
        if n_total > first:
            more, _ = fn(x[first:n_total])
            chunks.append(_as_3d(more, keep))
    values = np.concatenate(chunks, axis=0)
    x = x[:n_total]
    sources = source_columns(model.preprocessor, model.specs)
    agg, columns = aggregate(values, sources)
    return Explanation(
        values=agg,
        base=_base(expected, keep),
        output=raw_output(model, x, used),
        columns=columns,
        outputs=outputs,
        method=used,
        space=output_space(model, used),
    )


# --------------------------------------------------------------------------------------
# Directions, summaries and plots.


def feature_values(sample: pd.DataFrame, model: model_format.TabularModel) -> pd.DataFrame:
    """A numeric view of each source column, for colouring plots and finding directions."""
    canonical, _ = coerce(sample, model.specs)
    out = {}
    for spec in model.specs:
        if spec.kind == "categorical":
            out[spec.name] = pd.Categorical(canonical[spec.name]).codes.astype(float)
        elif spec.kind == "datetime":
            out[spec.name] = canonical[f"{spec.name}__epoch_days"].to_numpy()
        else:
            out[spec.name] = canonical[spec.name].to_numpy()
    return pd.DataFrame(out, index=sample.index)


def direction(spec_kind: str, raw: pd.Series, numeric: np.ndarray, shap_col: np.ndarray) -> str:
    """How a column moves the score, in words."""
    ok = ~np.isnan(numeric) if numeric.dtype.kind == "f" else np.ones(len(numeric), bool)
    if spec_kind == "categorical":
        means = pd.Series(shap_col).groupby(raw.astype(str).to_numpy()).mean()
        if means.empty:
            return "no effect"
        return f"'{means.idxmax()}' raises it most, '{means.idxmin()}' lowers it most"
    if ok.sum() < 3 or np.std(numeric[ok]) == 0:
        return "no clear direction"
    corr = float(np.corrcoef(numeric[ok], shap_col[ok])[0, 1])
    if not np.isfinite(corr) or abs(corr) < 0.1:
        return "mixed (no monotone direction)"
    word = "true/yes" if spec_kind == "boolean" else "higher values"
    return f"{word} {'raise' if corr > 0 else 'lower'} the score (r={corr:+.2f})"


def summarise(exp: Explanation, model, sample: pd.DataFrame, top: int) -> dict[str, Any]:
    kinds = {s.name: s.kind for s in model.specs}
    numeric = feature_values(sample.iloc[: exp.values.shape[0]], model)
    importance = np.abs(exp.values).mean(axis=0).sum(axis=1)
    ranked = np.argsort(-importance, kind="mergesort")
    features = []
    for j in ranked:
        col = exp.columns[j]
        k = int(np.argmax(np.abs(exp.values[:, j, :]).mean(axis=0)))
        features.append(
            {
                "feature": col,
                "mean_abs_shap": float(importance[j]),
                "direction": direction(
                    kinds[col],
                    sample[col].iloc[: exp.values.shape[0]],
                    numeric[col].to_numpy(),
                    exp.values[:, j, k],
                ),
                "for_class": exp.outputs[k],
            }
        )
    return {
        "method": exp.method,
        "output_space": exp.space,
        "explained_outputs": exp.outputs,
        "rows_explained": int(exp.values.shape[0]),
        "base_value": exp.base.tolist(),
        "top_features": features[:top],
        "all_features": features,
        "max_additivity_error": float(
            np.max(np.abs(exp.values.sum(axis=1) + exp.base - exp.output))
        ),
    }


def chosen_rows(p_pos: np.ndarray, threshold: float | None, n: int) -> dict[str, list[int]]:
    """Highest-risk rows and borderline rows (closest to the decision threshold)."""
    order = np.argsort(-p_pos, kind="mergesort")
    chosen = {"highest_risk": order[:n].tolist()}
    if threshold is not None:
        near = np.argsort(np.abs(p_pos - threshold), kind="mergesort")
        chosen["borderline"] = [int(i) for i in near if i not in chosen["highest_risk"]][:n]
    return chosen


def make_plots(
    exp: Explanation,
    values_df: pd.DataFrame,
    summary: dict,
    chosen: dict,
    folder: Path,
    seed: int = 0,
) -> list[Path]:
    """The explanation plots as PNGs. SHAP's beeswarm jitters points with NumPy's global
    generator: it is seeded here (and restored after) so the same inputs give the same
    files."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return _plots(exp, values_df, summary, chosen, folder)
    finally:
        np.random.set_state(state)


def _plots(
    exp: Explanation, values_df: pd.DataFrame, summary: dict, chosen: dict, folder: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    from mlplatform.evaluation.plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str) -> None:
        written.append(
            save_figure(plt.gcf(), folder / name, dpi=80, tight=False, bbox_inches="tight")
        )
        plt.close("all")

    # Global importance: mean |SHAP| per source column (summed over explained outputs).
    feats = summary["all_features"][:20][::-1]
    _fig, ax = plt.subplots(figsize=(7, 0.35 * len(feats) + 1.2))
    ax.barh([f["feature"] for f in feats], [f["mean_abs_shap"] for f in feats], color="#1f77b4")
    ax.set(xlabel=f"mean |SHAP| ({exp.space})", title="Global importance")
    save("importance.png")

    data = values_df.iloc[: exp.values.shape[0]][exp.columns].to_numpy(dtype=float)
    for k, label in enumerate(exp.outputs):
        e = shap.Explanation(
            values=exp.values[:, :, k],
            base_values=np.full(len(data), exp.base[k]),
            data=data,
            feature_names=exp.columns,
        )
        suffix = "" if len(exp.outputs) == 1 else f"_{_slug(label)}"
        shap.plots.beeswarm(e, max_display=15, show=False)
        plt.title(f"SHAP values ({exp.space}, class {label})")
        save(f"beeswarm{suffix}.png")
        if k == 0:
            for f in summary["top_features"]:
                shap.plots.scatter(e[:, f["feature"]], show=False)
                save(f"dependence_{_slug(f['feature'])}.png")
            for kind, rows in chosen.items():
                for rank, i in enumerate(rows):
                    if i < len(e):
                        shap.plots.waterfall(e[i], max_display=12, show=False)
                        save(f"waterfall_{kind}_{rank + 1}.png")
    return written


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Explain a stratified test sample; write reports/explain and log it to the training run."""

    from mlplatform import tracking

    schema: DatasetSchema = load_schema(paths)
    trained = read_json(paths.train_report)
    model = model_format.load(paths.model)
    test, train = load_split(paths, "test"), load_split(paths, "train")
    cfg = params.explain
    sample = stratified_sample(test, schema.target, cfg.sample_size, params.seed)
    background = stratified_sample(train, schema.target, cfg.background_size, params.seed)
    t0 = time.perf_counter()
    exp = explain(model, sample, background, cfg, method=cfg.method)
    seconds = time.perf_counter() - t0
    sample = sample.iloc[: exp.values.shape[0]]
    summary = summarise(exp, model, sample, cfg.top_features)
    proba = model.predict_proba(sample)
    p_pos = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    chosen = chosen_rows(p_pos, model.threshold, cfg.n_local)
    summary.update(
        sample_rows=[int(i) for i in sample.index],
        chosen_rows={k: [int(sample.index[i]) for i in v] for k, v in chosen.items()},
    )
    table = pd.DataFrame({"row": sample.index.to_numpy()})
    for k, label in enumerate(exp.outputs):
        prefix = "" if len(exp.outputs) == 1 else f"{label}:"
        for j, col in enumerate(exp.columns):
            table[f"{prefix}shap_{col}"] = exp.values[:, j, k]
        table[f"{prefix}base_value"] = exp.base[k]
        table[f"{prefix}model_output"] = exp.output[:, k]
    with atomic_dir(paths.explain) as tmp:
        make_plots(exp, feature_values(sample, model), summary, chosen, tmp, params.seed)
        table.to_parquet(tmp / "shap_values.parquet", index=False)
        write_json(tmp / "summary.json", summary)
    client, _ = tracking.setup(params)
    client.log_artifacts(trained["run_id"], str(paths.explain), "explain")
    # Timing goes to MLflow, not into summary.json (a DVC output must not change run to run).
    client.log_metric(trained["run_id"], "explain_seconds", seconds)
    log.info(
        "explained %d rows with the %s explainer in %.1f s; top: %s",
        len(sample),
        exp.method,
        seconds,
        ", ".join(f["feature"] for f in summary["top_features"]),
    )
    return summary
