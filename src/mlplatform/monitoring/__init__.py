"""Monitoring: the prediction log, drift against the training reference, the retraining signal.

Pure cores (no MLflow): ``reference`` freezes what training looked like, ``drift`` compares a
window with it (and says whether to retrain), ``performance`` measures or estimates the
window's metrics, ``report`` renders the results as self-contained HTML.

The names below are imported on first use: the prediction log lives in this package too and
runs inside the scoring server, which must not pay for scipy and sklearn at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MonitoringConfig": "mlplatform.monitoring.settings",
    "build_reference": "mlplatform.monitoring.reference",
    "load_reference": "mlplatform.monitoring.reference",
    "save_reference": "mlplatform.monitoring.reference",
    "compare": "mlplatform.monitoring.drift",
    "retraining_signal": "mlplatform.monitoring.drift",
    "render_report": "mlplatform.monitoring.report",
    "write_report": "mlplatform.monitoring.report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlplatform.monitoring' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
