"""mlplatform: experiment tracking and a guarded model registry for tabular ML."""

import os as _os

from mlplatform import privacy as _privacy

_privacy.apply()

# The user's own MLFLOW_TRACKING_URI (team mode), read before anything here calls
# mlflow.set_tracking_uri(), which overwrites that variable for child processes.
USER_TRACKING_URI = _os.environ.get("MLFLOW_TRACKING_URI")
USER_REGISTRY_URI = _os.environ.get("MLFLOW_REGISTRY_URI")

__version__ = "0.1.0"
