"""Search spaces from params.yaml: each family's hyperparameters as Optuna distributions.

A hyperparameter is either a fixed value or a range: ``{low, high}`` (int when both are
ints, float otherwise; ``log`` and ``step`` optional) or ``{choices: [...]}``. Optuna
parameter names are namespaced by family (``xgboost.max_depth``) because families are
conditional branches of one study; MLflow gets the plain names so runs line up.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mlplatform.errors import ConfigError
from mlplatform.search.settings import DistributionSpec, TuneConfig

FAMILY_PARAM = "family"
NO_FAMILY = "(not sampled)"


def to_distribution(spec: DistributionSpec) -> BaseDistribution:
    """Turn one params.yaml range into an Optuna distribution."""
    kind = spec.kind
    if kind == "categorical":
        return CategoricalDistribution(spec.choices)
    if kind == "int":
        step = int(spec.step) if spec.step is not None else 1
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=step)
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)


def parse(cfg: TuneConfig) -> dict[str, dict[str, BaseDistribution | Any]]:
    """Validate and convert every family's search space.

    Returns:
        family -> {hyperparameter -> Optuna distribution, or a fixed value}.

    Hyperparameter names are checked when params.yaml is loaded (``config.parse_params``).

    Raises:
        ConfigError: a range Optuna refuses (naming the key path).
    """
    spaces: dict[str, dict[str, Any]] = {}
    for family, params in cfg.families.items():
        space: dict[str, Any] = {}
        for name, spec in params.items():
            if isinstance(spec, DistributionSpec):
                try:
                    space[name] = to_distribution(spec)
                except ValueError as exc:
                    raise ConfigError(f"tune.families.{family}.{name}: {exc}") from None
            else:
                space[name] = spec
        spaces[family] = space
    return spaces


def suggest(trial: optuna.Trial, spaces: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Sample a family and its hyperparameters for one trial."""
    family = trial.suggest_categorical(FAMILY_PARAM, list(spaces))
    values: dict[str, Any] = {}
    for name, dist in spaces[family].items():
        key = f"{family}.{name}"
        if isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            values[name] = trial.suggest_float(
                key, dist.low, dist.high, step=dist.step, log=dist.log
            )
        elif isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(key, dist.choices)
        else:
            values[name] = dist
    return family, values


def plain_params(
    params: dict[str, Any], spaces: dict[str, dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]]:
    """Optuna's namespaced params of a trial -> (family, plain-named values).

    With ``spaces``, the family's fixed (not searched) values are filled in too, which is
    what a refit needs.
    """
    family = params.get(FAMILY_PARAM)
    if family is None:  # a trial that died before its family was drawn
        return NO_FAMILY, {}
    prefix = f"{family}."
    values = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    if spaces is not None:
        for name, dist in spaces.get(family, {}).items():
            if not isinstance(dist, BaseDistribution):
                values.setdefault(name, dist)
    return family, values


START_POINT_ATTR = "start_point"  # user attribute of a trial queued from tune.start_points


def start_params(cfg: TuneConfig) -> list[dict[str, Any]]:
    """Optuna parameters of each ``tune.start_points`` entry, in params.yaml's order.

    Only searched hyperparameters are given (a fixed one is not suggested); those a start
    point leaves out are drawn by the sampler. Values were checked at load
    (``TuneConfig.bad_start_points``).
    """
    spaces = parse(cfg)
    out = []
    for family, values in cfg.start_points.items():
        if family not in spaces:
            continue  # not searched
        params: dict[str, Any] = {FAMILY_PARAM: family}
        for name, value in values.items():
            dist = spaces[family].get(name)
            if isinstance(dist, IntDistribution):
                params[f"{family}.{name}"] = int(value)
            elif isinstance(dist, FloatDistribution):
                params[f"{family}.{name}"] = float(value)
            elif isinstance(dist, CategoricalDistribution):
                params[f"{family}.{name}"] = value
        out.append(params)
    return out


def enqueue_start_points(study: optuna.Study, cfg: TuneConfig) -> int:
    """Queue the start points on a study that has no trials yet; returns how many.

    A cheap, sound configuration of each family first (FLAML's "low-cost initial point"):
    the search has a fitted model of every family within seconds, and TPE's random start
    follows. Deterministic: the queue is taken in order, before anything is sampled.
    """
    if study.get_trials(deepcopy=False):
        return 0
    points = start_params(cfg)
    for p in points:
        study.enqueue_trial(p, user_attrs={START_POINT_ATTR: True})
    return len(points)
