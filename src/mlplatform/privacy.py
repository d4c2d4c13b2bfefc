"""Private by default: nothing leaves the machine.

MLflow telemetry is on by default and DVC sends analytics unless told not to. The package
switches both off for its own processes (``apply()`` runs on import of ``mlplatform``, before
MLflow is imported), ``.dvc/config`` sets ``core.analytics = false``, and ``make setup`` runs
``mlplatform.privacy.install()``, which drops a ``.pth`` file into the virtualenv so
every Python process started from it (``mlflow ui``, ``mlflow models serve``, ``dvc``) gets the
same settings even when started by hand.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

SETTINGS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    # The job runner of `mlflow server`/`mlflow ui` starts huey workers (about 2.4 GB RSS).
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}

PTH_NAME = "mlplatform_privacy.pth"


def apply() -> None:
    """Set the privacy settings in this process unless the user chose otherwise."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)


def pth_line() -> str:
    pairs = ", ".join(f"({k!r}, {v!r})" for k, v in SETTINGS.items())
    return f"import os; [os.environ.setdefault(k, v) for k, v in ({pairs},)]\n"


def install(site_packages: Path | None = None) -> Path:
    """Write the .pth file into the active environment's site-packages."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(pth_line())
    return target
